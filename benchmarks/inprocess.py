"""The chat load of ``benchmarks.load``, run on the project's engine in-process: no HTTP, no Ray.

``python -m benchmarks.inprocess --config configs/engines-cpu.yaml --model smollm2-vllm -c 1 8``

The engine is built from the model's entry in the config exactly as its replica builds it
(``deployments.engines.start_engine``), the prompts are the load generator's (same seeds), each
request applies the chat template and streams ``--max-tokens`` tokens (``ignore_eos``), and the
figures are computed the same way as for the HTTP paths, so the graph's overhead is the
difference. Prints one ``RESULT {json}`` line (run in its own process by ``benchmarks.chat``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from benchmarks.load import WARM_SEED, add_level_args, level_result, level_seed, prompts

REPO = Path(__file__).resolve().parents[1]


def llm_config(config_file: str, model: str):
    """The ``LLMConfig`` of ``model`` in a serve config file."""
    from deployments.config import LLMConfig

    config = yaml.safe_load((REPO / config_file).read_text())
    for app in config["applications"]:
        for entry in app.get("args", {}).get("llms", []):
            if entry["id"] == model:
                return LLMConfig(**entry)
    raise KeyError(f"{model!r} is not an LLM of {config_file}")


async def _one(engine, tokenizer, request_id: str, prompt: str, params) -> tuple[float, list[float], int]:
    """One request: (TTFT, inter-token gaps, tokens), timed from before the chat template."""
    start = time.perf_counter()
    ids = tokenizer.chat_prompt([{"role": "user", "content": prompt}])
    ttft, last, gaps, tokens, pieces = None, None, [], 0, 0
    async for chunk in engine.generate(request_id, ids, params):
        now = time.perf_counter()
        if not chunk.token_ids:
            continue
        tokens += len(chunk.token_ids)
        if ttft is None:
            ttft = now - start
        else:
            gaps.append(now - last)
        last = now
        pieces += 1
    per_piece = max(1.0, (tokens - 1) / max(1, pieces - 1)) if pieces > 1 else 1.0  # as benchmarks.load
    return ttft if ttft is not None else float("nan"), [g / per_piece for g in gaps], tokens


async def _level(engine, tokenizer, c: int, n: int, params, seed: int | None = None):
    """n requests, c at a time, as ``benchmarks.load.run_level`` sends them over HTTP."""
    queue = list(enumerate(prompts(n, seed=level_seed(c) if seed is None else seed)))
    ttfts, itls, tokens, errors = [], [], 0, 0

    async def worker() -> None:
        nonlocal tokens, errors
        while queue:
            i, prompt = queue.pop()
            try:
                ttft, gaps, got = await _one(engine, tokenizer, f"c{c}-{i}", prompt, params)
                ttfts.append(ttft)
                itls.extend(gaps)
                tokens += got
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors += 1
                print(f"  error: {exc!r}", flush=True)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    return level_result(c, n, errors, tokens, time.perf_counter() - start, ttfts, itls)


async def bench(
    config_file: str, model: str, levels: list[int], per_level: int, max_tokens: int, warm_level: bool = True
) -> dict:
    from deployments import model_store
    from deployments.engines import start_engine
    from deployments.engines.base import SamplingParams
    from deployments.engines.tokenizer import HFTokenizer

    config = llm_config(config_file, model)
    started = time.perf_counter()
    engine = await start_engine(config)
    load_s = time.perf_counter() - started
    tokenizer = HFTokenizer.load(model_store.resolve(config.source, config.dtype))
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    await _one(engine, tokenizer, "warm-up", "warm up", SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    results = []
    try:
        # the untimed level at the highest concurrency every HTTP path gets (benchmarks.chat): a
        # c=1 level right after a wide one ran slower than later ones (BENCHMARKS.md, session 18),
        # so the paths compare only if each measures its levels after the same warm-up
        if warm_level:
            await _level(engine, tokenizer, max(levels), max(levels), params, seed=WARM_SEED + max(levels))
        for c in levels:
            r = await _level(engine, tokenizer, c, max(c, per_level), params)
            print(f"  in-process {model} c={c}: {r.tokens_per_s} tok/s, TTFT p50 {r.ttft_p50_s}s p99 {r.ttft_p99_s}s", flush=True)
            results.append(asdict(r))
    finally:
        await engine.shutdown()
    return {"engine": engine.info().engine, "load_s": round(load_s, 1), "warm_level": warm_level, "levels": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/engines-cpu.yaml")
    add_level_args(parser)
    parser.add_argument("--no-warm-level", dest="warm_level", action="store_false",
                        help="no untimed level at the highest concurrency before the measured ones (in-process runs before session 18 had none)")
    args = parser.parse_args()
    out = asyncio.run(bench(args.config, args.model, args.concurrency, args.requests_per_level, args.max_tokens, args.warm_level))
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
