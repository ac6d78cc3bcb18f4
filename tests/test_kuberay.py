"""The KubeRay manifest serves exactly the application of serve_config.yaml."""

from __future__ import annotations

import yaml

from deployments import kuberay
from deployments.config import AppConfig


def test_rayservice_is_generated_from_serve_config():
    assert kuberay.TARGET.read_text() == kuberay.render(), "run `python -m deployments.kuberay` after editing serve_config.yaml"


def test_rayservice_serves_the_same_applications():
    manifest = yaml.safe_load(kuberay.TARGET.read_text())
    assert manifest["kind"] == "RayService" and manifest["apiVersion"] == "ray.io/v1"
    serve_v2 = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    local = yaml.safe_load(kuberay.SOURCE.read_text())
    assert serve_v2["applications"] == local["applications"]
    assert serve_v2["http_options"] == {"host": "0.0.0.0", "port": 8000}
    for app in serve_v2["applications"]:
        AppConfig.model_validate(app["args"])  # the args are valid for the app builder


def test_rayservice_containers_carry_the_serving_environment():
    """Ray reads the fast path's settings at start: every container must have them."""
    from deployments import serving_env

    manifest = yaml.safe_load(kuberay.TARGET.read_text())
    spec = manifest["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    wanted = serving_env.load()
    assert wanted.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container["env"]}
            assert {k: env.get(k) for k in wanted} == wanted, container["name"]


def test_rayservice_starts_ray_under_sched_batch():
    """KubeRay runs the containers' own command (the annotation, copied onto the RayCluster), which
    is KubeRay's generated `ray start` under SCHED_BATCH, as `make serve` starts Ray."""
    from deployments import serving_env

    manifest = yaml.safe_load(kuberay.TARGET.read_text())
    assert manifest["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    spec = manifest["spec"]["rayClusterConfig"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert container["command"] == ["/bin/bash", "-lc", "--"], container["name"]
            (args,) = container["args"]
            assert f"exec {' '.join(serving_env.SCHEDULER)} $KUBERAY_GEN_RAY_START_CMD" in args, container["name"]
            assert "ulimit -n 65536" in args  # what KubeRay's own command would have set
