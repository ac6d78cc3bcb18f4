"""Streamed chat load with the official async openai client.

``python -m benchmarks.load --base-url http://127.0.0.1:8000/v1 --model smollm2-vllm -c 1 8 32 64``

Each request streams exactly ``--max-tokens`` new tokens (``ignore_eos``), from a fixed, seeded
set of prompts of mixed lengths; every level runs ``--requests-per-level`` requests (at least
the concurrency) with that many in flight. Reported per level: output tokens/s (all tokens over
wall time), time to first token p50/p99, inter-token latency p50/p99 (gaps between content
chunks, divided by the tokens they carry), errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass

import openai

from benchmarks.stats import pct

TOPICS = ["the sea", "mountains", "a city at night", "an old library", "the history of bread", "a robot", "winter", "a lighthouse"]


# The untimed warm-up level's prompts are never a measured level's: vLLM keeps a prompt's prefix
# in its cache, and a measured level that repeated warm-up prompts would skip their prefill.
WARM_SEED = 1_000_000


def level_seed(concurrency: int, visit: int = 0) -> int:
    """The prompts' seed of a measured level: its concurrency, and where a server is measured
    several times (``benchmarks.chat.bench_default``'s visits), the visit too, so no visit
    repeats prompts an earlier one left in the prefix cache (same lengths, other topics)."""
    return concurrency + 1000 * visit


def prompts(n: int, seed: int = 0) -> list[str]:
    """Mixed lengths: a short question, a paragraph-sized one, and a long context."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        kind = i % 3
        if kind == 0:
            out.append(f"Write about {topic}.")
        elif kind == 1:
            out.append(f"Here are some notes: {' '.join(rng.choice(TOPICS) for _ in range(20))}. Write a story about {topic}.")
        else:
            out.append("Summarise this text. " + " ".join(f"Sentence {j} is about {rng.choice(TOPICS)}." for j in range(40)))
    return out


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    output_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    itl_p50_ms: float
    itl_p99_ms: float


async def one_request(client, model: str, prompt: str, max_tokens: int, extra: dict) -> tuple[float, list[float], int]:
    start = time.perf_counter()
    ttft, last, gaps, tokens = None, None, [], 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    pieces = 0
    async for chunk in stream:
        now = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            if ttft is None:
                ttft = now - start
            elif last is not None:
                gaps.append(now - last)
            last = now
            pieces += 1
    # a message may carry several tokens (coalescing): spread each gap over what it carried
    per_piece = max(1.0, (tokens - 1) / max(1, pieces - 1)) if pieces > 1 else 1.0
    return ttft if ttft is not None else float("nan"), [g / per_piece for g in gaps], tokens


async def run_level(
    client, model: str, concurrency: int, n_requests: int, max_tokens: int, extra: dict, seed: int | None = None
) -> LevelResult:
    """``n_requests`` streamed requests, ``concurrency`` at a time, on the prompts of ``seed``
    (by default :func:`level_seed` of the concurrency)."""
    queue = list(enumerate(prompts(n_requests, seed=level_seed(concurrency) if seed is None else seed)))
    ttfts, itls, tokens, errors = [], [], 0, 0

    async def worker():
        nonlocal tokens, errors
        while queue:
            _, prompt = queue.pop()
            try:
                ttft, gaps, n = await one_request(client, model, prompt, max_tokens, extra)
                ttfts.append(ttft)
                itls.extend(gaps)
                tokens += n
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors += 1
                print(f"  error: {exc!r}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return level_result(concurrency, n_requests, errors, tokens, time.perf_counter() - start, ttfts, itls)


def level_result(
    concurrency: int, n_requests: int, errors: int, tokens: int, wall: float, ttfts: list[float], itls: list[float]
) -> LevelResult:
    """One level's figures from its raw measurements (seconds); shared with the in-process run."""
    return LevelResult(
        concurrency, n_requests, errors, tokens, round(wall, 2), round(tokens / wall, 1) if wall > 0 else 0.0,
        round(pct(ttfts, 50), 3), round(pct(ttfts, 99), 3),
        round(pct(itls, 50) * 1000, 1), round(pct(itls, 99) * 1000, 1),
    )


async def run(base_url: str, model: str, levels: list[int], max_tokens: int, requests_per_level: int, extra: dict) -> list[LevelResult]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", timeout=600, max_retries=0)
    await one_request(client, model, "warm up", 4, extra)
    results = []
    for c in levels:
        r = await run_level(client, model, c, max(c, requests_per_level), max_tokens, extra)
        print(f"  {model} c={c}: {r.tokens_per_s} tok/s, TTFT p50 {r.ttft_p50_s}s p99 {r.ttft_p99_s}s, ITL p50 {r.itl_p50_ms}ms, errors {r.errors}")
        results.append(r)
    await client.close()
    return results


def add_level_args(parser: argparse.ArgumentParser) -> None:
    """The options every chat load path shares: model, concurrency levels, tokens, requests."""
    parser.add_argument("--model", required=True)
    parser.add_argument("-c", "--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-level", type=int, default=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    add_level_args(parser)
    parser.add_argument("--no-ignore-eos", action="store_true", help="for servers without the ignore_eos extra")
    args = parser.parse_args()
    extra = {} if args.no_ignore_eos else {"ignore_eos": True}
    results = asyncio.run(run(args.base_url, args.model, args.concurrency, args.max_tokens, args.requests_per_level, extra))
    print(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
