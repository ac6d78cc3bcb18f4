"""The Batch API benchmark (``python -m benchmarks.run --only batch``), each alone on the machine.

* ``batch-chat``: a 512-line chat file (64 new tokens each, greedy, ``ignore_eos``) through the
  graph's ``/v1/batches`` (``serve_config.yaml``, its vLLM model; run twice on one app: alone, for
  the throughput, then with online c=1 requests timed before and while it runs), against vLLM's own
  ``python -m vllm.entrypoints.openai.run_batch`` on the same file, model folder and engine
  arguments. Both are timed on a warm engine, after one wave of warm-up lines (as many as the
  engine has seats, other prompts): the graph's is the batch from ``batches.create`` to
  ``completed`` on a running app that has just run the warm-up lines as a batch of their own
  (untimed); vLLM's is a run of the warm-up lines followed by the file, minus a run of the
  warm-up lines alone (its engine's start and warm-up taken off). Before, the graph's batch ran
  on a fresh app and vLLM's figure took off a one-line run: the graph's first wide batch paid
  its first-use costs (the engine's first wide steps, the batch driver's and the front's first
  calls) and ran 0.78x and 0.87x, the same file on the then warm app 1.06x (BENCHMARKS.md,
  session 15). A server that has served before has paid them; the warm-up pays them on both.
* ``batch-embeddings``: 10,000 sentences, one per line, through ``/v1/batches`` against raw
  ``SentenceTransformer.encode`` (``benchmarks.embeddings.bench_raw``).

Targets (issue 15): chat >= 0.9x run_batch, embeddings >= 0.8x raw encode.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.load import prompts
from deployments.config import BatchConfig

REPO = Path(__file__).resolve().parents[1]
CHAT_LINES, MAX_TOKENS, SENTENCES = 512, 64, 10_000
# Batch requests in flight: the product's defaults, so the figures describe the app as shipped:
# `batch.concurrency` (48 of the chat model's 64 engine seats, so online requests find a free seat;
# vLLM preempts for KV space, not for seats: at 64, an online request waited for a wave of batch
# lines to end, 13.9x idle TTFT) while no online request is served, `batch.concurrency_while_online`
# (8) while online requests come. Embeddings: requests of `batch.embedding_lines_per_request` (64)
# lines each.
CHAT_CONCURRENCY = EMBED_CONCURRENCY = BatchConfig().concurrency
# Online c=1 requests timed before the batch and again while it runs (5 gave a noisy idle p50).
ONLINE_PROBES = 20
LLM_ID, EMBED_ID = "smollm2-135m-instruct", "all-minilm-l6-v2"


def chat_file(n: int = CHAT_LINES, max_tokens: int = MAX_TOKENS, model: str = LLM_ID, prefix: str = "c") -> bytes:
    """``n`` chat lines ``<prefix><i>``; the prompts depend on ``n`` (a warm-up file of another
    length has other prompts, so it leaves nothing in a prefix cache for the measured one)."""
    lines = [
        {"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens,
                  "temperature": 0, "ignore_eos": True}}
        for i, p in enumerate(prompts(n, seed=n))
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def embedding_file(n: int = SENTENCES) -> bytes:
    from benchmarks.embeddings import sentences

    return b"".join(
        json.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": EMBED_ID, "input": s}}).encode() + b"\n"
        for i, s in enumerate(sentences(n))
    )


def online_ttft(client, n: int = ONLINE_PROBES, model: str = LLM_ID) -> dict:
    """c=1 streamed chat requests one after another: their time to first token (p50, max), and
    how many got a 429 (a batch must never cause one)."""
    import openai

    ttfts, refused = [], 0
    for i in range(n):
        start = time.perf_counter()
        try:
            stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Say hello {i}."}],
                                                    max_tokens=8, temperature=0, stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    ttfts.append(time.perf_counter() - start)
                    break
            stream.close()
        except openai.RateLimitError:
            refused += 1
    ttfts.sort()
    return {"n": n, "ttft_p50_s": round(ttfts[len(ttfts) // 2], 3) if ttfts else None,
            "ttft_max_s": round(ttfts[-1], 3) if ttfts else None, "rate_limited": refused}


def run_through_graph(app, data: bytes, endpoint: str, timeout: float = 3600, probe_online: bool = False) -> dict:
    """Upload ``data``, run it as a batch on the running ``app``; wall time and tokens (and,
    with ``probe_online``, online c=1 TTFT idle and while the batch runs)."""
    import threading

    import openai

    client = openai.OpenAI(base_url=app.base_url + "/v1", api_key="bench", timeout=600, max_retries=0)
    online: dict = {}
    if probe_online:
        online["idle"] = online_ttft(client)
    f = client.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="batch")
    start = time.perf_counter()
    batch = client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")
    probe = None
    if probe_online:
        def during() -> None:
            time.sleep(5)  # the batch's lines are in the engine by then
            online["during_batch"] = online_ttft(client)

        probe = threading.Thread(target=during, daemon=True)
        probe.start()
    deadline = time.monotonic() + timeout
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch still {batch.status}")
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    wall = time.perf_counter() - start
    out = [json.loads(l) for l in client.files.content(batch.output_file_id).text.splitlines()] if batch.output_file_id else []
    tokens = sum((o["response"]["body"].get("usage") or {}).get("completion_tokens", 0) for o in out)
    row = {"status": batch.status, "lines": len(out), "failed": batch.request_counts.failed, "wall_s": round(wall, 2),
           "lines_per_s": round(len(out) / wall, 2)}
    if tokens:
        row["tokens"], row["tokens_per_s"] = tokens, round(tokens / wall, 1)
    if probe is not None:
        probe.join(timeout=600)
        row["online_c1"] = online
        idle, busy = online.get("idle", {}).get("ttft_p50_s"), online.get("during_batch", {}).get("ttft_p50_s")
        row["online_ttft_ratio"] = round(busy / idle, 2) if idle and busy else None
    print(f"  graph batch {endpoint}: {row}", flush=True)
    return row


def _start_graph(concurrency: int, tmp: Path):
    from tests.conftest import start_app

    def tweak(config):
        app = config["applications"][0]
        app["args"]["audio"] = []
        app["args"]["batch"] = {"storage": str(tmp / "files"), "db_path": str(tmp / "batch.db"), "concurrency": concurrency}

    return start_app("serve_config.yaml", tmp, tweak)


def bench_graph(data: bytes, endpoint: str, concurrency: int, logs: Path, warm: bytes | None = None) -> dict:
    """``data`` as a batch on a fresh app (after ``warm``, untimed, as a batch of its own)."""
    from benchmarks.servers import stop_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    app = _start_graph(concurrency, tmp)
    try:
        warm_up = run_through_graph(app, warm, endpoint) if warm is not None else None
        row = run_through_graph(app, data, endpoint)
        if warm_up is not None:
            row["warm_up"] = {k: warm_up[k] for k in ("lines", "wall_s", "tokens_per_s") if k in warm_up}
        row["concurrency"] = concurrency
        if endpoint == "/v1/chat/completions":
            # The same file again on the same app, online c=1 requests timed before and during it:
            # the throughput row above is the batch alone, as run_batch's is; this one has online
            # traffic beside it for part of its run (the batch yields to it).
            probed = run_through_graph(app, data, endpoint, probe_online=True)
            row["online_c1"], row["online_ttft_ratio"] = probed.pop("online_c1"), probed.pop("online_ttft_ratio")
            row["with_online_probe"] = probed
        return row
    finally:
        stop_app(app, logs / f"batch-graph-{endpoint.strip('/').replace('/', '-')}.log")


def _default_llm():
    """The default config's chat model (its ``LLMConfig``)."""
    import yaml

    from deployments.config import AppConfig

    return AppConfig.model_validate(yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]).llms[0]


def warm_lines(quick: bool = False) -> int:
    """One wave of warm-up lines: the default chat model's engine seats (``max_batch_size``)."""
    return 8 if quick else _default_llm().max_batch_size


def _engine_args() -> tuple[str, list[str], dict[str, str]]:
    """The default config's vLLM model: its folder, run_batch's engine arguments, its env."""
    from deployments.model_store import resolve

    llm = _default_llm()
    args = ["--dtype", llm.dtype, "--max-num-seqs", str(llm.max_batch_size), "--served-model-name", llm.id]
    if llm.max_model_len:
        args += ["--max-model-len", str(llm.max_model_len)]
    for name, value in llm.engine_args.items():
        flag = "--" + name.replace("_", "-")
        args += [flag] if value is True else [] if value is False else [flag, str(value)]
    return resolve(llm.source, llm.dtype), args, dict(llm.vllm_env)


def bench_vllm_run_batch(data: bytes, logs: Path, warm: bytes) -> dict:
    """run_batch on ``warm`` then ``data`` (one file), minus run_batch on ``warm`` alone; the
    tokens are those of ``data``'s lines."""
    path, args, env = _engine_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-run-batch-"))

    def run(name: str, content: bytes) -> float:
        (tmp / f"{name}.jsonl").write_bytes(content)
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(tmp / f"{name}.jsonl"),
               "-o", str(tmp / f"{name}-out.jsonl"), "--model", path, *args]
        start = time.perf_counter()
        with open(logs / f"run-batch-{name}.log", "w") as log:
            subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=3600)
        return time.perf_counter() - start

    warm_ids = {json.loads(l)["custom_id"] for l in warm.splitlines() if l}
    alone = run("warm", warm)
    whole = run("whole", warm + data)
    out = [json.loads(l) for l in (tmp / "whole-out.jsonl").read_text().splitlines() if l]
    out = [o for o in out if o["custom_id"] not in warm_ids]
    tokens = sum((o["response"]["body"] or {}).get("usage", {}).get("completion_tokens", 0) for o in out if o.get("response"))
    wall = max(whole - alone, 1e-9)
    row = {"lines": len(out), "tokens": tokens, "wall_s": round(wall, 2), "start_s": round(alone, 2), "warm_lines": len(warm_ids),
           "tokens_per_s": round(tokens / wall, 1), "lines_per_s": round(len(out) / wall, 2)}
    print(f"  vLLM run_batch: {row}", flush=True)
    return row


def bench_chat(logs: Path, concurrency: int = CHAT_CONCURRENCY, quick: bool = False) -> dict:
    n = 32 if quick else CHAT_LINES
    data, warm = chat_file(n), chat_file(warm_lines(quick), prefix="warm")
    graph = bench_graph(data, "/v1/chat/completions", concurrency, logs, warm)
    vllm = bench_vllm_run_batch(data, logs, warm)
    return {"graph": graph, "vllm_run_batch": vllm,
            "ratio": round(graph.get("tokens_per_s", 0) / vllm["tokens_per_s"], 3) if vllm.get("tokens_per_s") else None}


def bench_embeddings(logs: Path, concurrency: int = EMBED_CONCURRENCY, quick: bool = False) -> dict:
    from benchmarks import embeddings
    from deployments.model_store import resolve

    n = 500 if quick else SENTENCES
    graph = bench_graph(embedding_file(n), "/v1/embeddings", concurrency, logs)
    cfg = embeddings.embedding_config()
    raw = embeddings.bench_raw(resolve(cfg["source"]), n, cfg["max_batch_size"], cfg["torch_threads"], cfg["dtype"], logs)
    raw_rate = raw.get("sentences_per_s") or raw.get("per_s")
    return {"graph": graph, "raw": raw, "ratio": round(graph["lines_per_s"] / raw_rate, 3) if raw_rate else None}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("part", choices=["chat", "embeddings"])
    parser.add_argument("--concurrency", type=int, default=CHAT_CONCURRENCY)
    parser.add_argument("--quick", action="store_true")
    a = parser.parse_args()
    logs = REPO / "benchmarks" / "results" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    fn = bench_chat if a.part == "chat" else bench_embeddings
    print("RESULT " + json.dumps(fn(logs, a.concurrency, a.quick)))
