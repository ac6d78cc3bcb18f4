"""The embeddings benchmarks: sentences/s with many requests in flight, against two baselines.

* the graph (``serve_config.yaml``'s MiniLM deployment): 64 clients in flight, single-sentence
  requests and 16-sentence requests, with the CPU each hop spent;
* raw ``SentenceTransformer.encode`` in one process (the graph runs one embedding replica), on
  the same model folder, with the replica's torch threads and batch size, on the same sentences;
* Infinity (``infinity_emb v2``) on the same model folder, offline, same batch size, same load.
  It needs sentence-transformers 3 / transformers 4, so it lives in its own virtualenv
  (``make bench-infinity``: ``.venv-infinity``).

The load uses the official ``openai`` client, as the chat load does (it asks for base64 vectors
and decodes them, as it does for any user).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from pathlib import Path

import yaml

from benchmarks.procstat import CPUMeter, per_request_ms
from benchmarks.servers import result_line, stop_group, wait_http
from benchmarks.stats import pct

REPO = Path(__file__).resolve().parents[1]
CONFIG = "serve_config.yaml"
INFINITY = REPO / ".venv-infinity" / "bin" / "infinity_emb"
IN_FLIGHT = 64
WORDS = (
    "the a river city night light old new quiet fast model server request answer token batch "
    "window garden winter summer bread library robot lighthouse mountain ocean story history "
    "music engine kernel memory cache thread process network signal report measure value"
).split()


def sentences(n: int, seed: int = 0) -> list[str]:
    """n fixed, seeded sentences of mixed lengths (6, 16 and 48 words in turn)."""
    rng = random.Random(seed)
    lengths = (6, 16, 48)
    return [" ".join(rng.choice(WORDS) for _ in range(lengths[i % 3])).capitalize() + "." for i in range(n)]


def embedding_config(config_file: str = CONFIG) -> dict:
    """The first embedding model of the config: id, source, batch size, the torch threads its
    replica runs in all (workers x threads each) and the dtype it runs on this machine: every
    baseline encodes with the same dtype and as many threads, in one encoder."""
    from deployments.config import EmbeddingConfig
    from deployments.embedding_server import resolve_dtype

    config = yaml.safe_load((REPO / config_file).read_text())
    entry = EmbeddingConfig.model_validate(config["applications"][0]["args"]["embeddings"][0])  # its defaults too
    return {
        "id": entry.id,
        "source": entry.source,
        "num_workers": entry.num_workers,
        "torch_threads": entry.worker_threads() * entry.num_workers,
        "max_batch_size": entry.max_batch_size,
        "dtype": resolve_dtype(entry.dtype),
    }


async def http_load(base_url: str, model: str, per_request: int, n_requests: int, in_flight: int = IN_FLIGHT) -> dict:
    """``n_requests`` embedding requests of ``per_request`` sentences, ``in_flight`` at a time."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", timeout=600, max_retries=0)
    texts = sentences(n_requests * per_request, seed=per_request)
    queue = [texts[i * per_request : (i + 1) * per_request] for i in range(n_requests)]
    queue.reverse()
    latencies: list[float] = []
    errors = 0
    first_error = None

    async def call(batch: list[str]) -> None:
        resp = await client.embeddings.create(model=model, input=batch if per_request > 1 else batch[0])
        if len(resp.data) != len(batch) or len(resp.data[0].embedding) == 0:
            raise RuntimeError(f"{len(resp.data)} vectors for {len(batch)} inputs")

    async def worker() -> None:
        nonlocal errors, first_error
        while queue:
            batch = queue.pop()
            start = time.perf_counter()
            try:
                await call(batch)
                latencies.append(time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors += 1
                first_error = first_error or repr(exc)

    try:
        for warm in range(4):
            await call(texts[:per_request])
        start = time.perf_counter()
        with CPUMeter() as cpu:
            await asyncio.gather(*(worker() for _ in range(in_flight)))
        wall = time.perf_counter() - start
    finally:
        await client.close()
    done = len(latencies) * per_request
    out = {
        "sentences_per_request": per_request,
        "in_flight": in_flight,
        "requests": n_requests,
        "errors": errors,
        "sentences": done,
        "wall_s": round(wall, 2),
        "sentences_per_s": round(done / wall, 1),
        "latency_p50_ms": round(pct(latencies, 50) * 1000, 1),
        "latency_p99_ms": round(pct(latencies, 99) * 1000, 1),
        "cpu_s": cpu.seconds,
        "cpu_ms_per_request": per_request_ms(cpu.seconds, n_requests),
    }
    if first_error:
        out["first_error"] = first_error
    print(
        f"  {per_request} sentence(s)/request, {in_flight} in flight: {out['sentences_per_s']} sentences/s, "
        f"p50 {out['latency_p50_ms']} ms, p99 {out['latency_p99_ms']} ms, errors {errors}, "
        f"CPU {out['cpu_ms_per_request'].get('total')} ms/request",
        flush=True,
    )
    return out


def load_both(base_url: str, model: str, n_single: int, n_batch16: int) -> dict:
    return {
        "single": asyncio.run(http_load(base_url, model, 1, n_single)),
        "batch16": asyncio.run(http_load(base_url, model, 16, n_batch16)),
    }


def raw_encode(path: str, n: int, batch_size: int, threads: int, dtype: str = "float32") -> None:
    """``SentenceTransformer.encode`` on n sentences in batches, the model loaded in ``dtype`` as
    the replica loads it; prints ``RESULT {json}``."""
    import json

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(path, device="cpu", model_kwargs={"dtype": getattr(torch, dtype)})
    texts = sentences(n, seed=16)
    model.encode(texts[:batch_size], batch_size=batch_size)  # warm up
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size)
    wall = time.perf_counter() - start
    assert len(vectors) == n
    print("RESULT " + json.dumps({
        "sentences": n, "batch_size": batch_size, "torch_threads": threads, "dtype": dtype,
        "wall_s": round(wall, 2), "sentences_per_s": round(n / wall, 1),
    }))


def bench_raw(path: str, n: int, batch_size: int, threads: int, dtype: str, logs: Path) -> dict:
    code = f"from benchmarks.embeddings import raw_encode; raw_encode({path!r}, {n}, {batch_size}, {threads}, {dtype!r})"
    out = result_line(["-c", code], "raw encode", timeout=1800, log=logs / "raw-encode.log")
    print(f"raw encode: {out}", flush=True)
    return out


def bench_infinity(path: str, model: str, batch_size: int, dtype: str, n_single: int, n_batch16: int, logs: Path) -> dict:
    """Infinity from its own virtualenv on the same folder and dtype, offline; the same two loads."""
    from tests.conftest import free_port

    if not INFINITY.exists():
        return {"error": f"{INFINITY.relative_to(REPO)} is missing: run `make bench-infinity` (make bench does)"}
    port = free_port()
    cmd = [
        str(INFINITY), "v2", "--model-id", path, "--served-model-name", model, "--engine", "torch",
        "--device", "cpu", "--batch-size", str(batch_size), "--dtype", dtype, "--no-bettertransformer",
        "--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1", "--log-level", "warning",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    t0 = time.monotonic()
    with open(logs / "infinity-server.log", "w") as log:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/health", 300, proc)  # /health stays at the root
        except Exception as exc:  # noqa: BLE001 - reported in the results and the report
            tail = (logs / "infinity-server.log").read_text(errors="replace")[-1500:]
            return {"error": f"Infinity did not start: {exc}; log tail: {tail}"}
        out = {"command": " ".join(["infinity_emb", *cmd[1:]]), "start_to_healthy_s": round(time.monotonic() - t0, 1)}
        version = subprocess.run([str(INFINITY.parent / "python"), "-c", "import infinity_emb, torch, sentence_transformers as s; print(f'infinity-emb {infinity_emb.__version__}, torch {torch.__version__}, sentence-transformers {s.__version__}')"], capture_output=True, text=True, check=False)
        out["versions"] = version.stdout.strip()
        print(f"Infinity ({out['versions']})", flush=True)
        out.update(load_both(f"http://127.0.0.1:{port}/v1", model, n_single, n_batch16))
        return out
    finally:
        stop_group(proc)
