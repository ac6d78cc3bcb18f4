"""The embedding model server: OpenAI ``/v1/embeddings`` on sentence-transformers.

Concurrent requests are encoded together: each request's inputs join one batch, sized in
*inputs* (not requests) and closed after ``batch_wait_timeout_s``. A batch (one encode call)
holds about ``INPUTS_PER_CALL`` inputs, in whole forward passes of ``max_batch_size``:
sentence-transformers sorts a call's inputs by length before cutting them into passes, so under
load each pass pads its inputs to a similar length instead of to the longest of a mixed bunch
(measured: the replica's CPU per 16-sentence request fell by about 40% in a quick run,
BENCHMARKS.md). Encoding runs in worker threads so the event loop keeps accepting requests while
a batch computes: ``num_workers`` batches at once, each on ``torch_threads`` torch threads of
its own. Two single-threaded workers on 2 cores encoded 1.04-1.27x as many sentences per second
as one worker on two threads (BENCHMARKS.md, session 10): no OpenMP barrier for a busy event
loop to stall, and one worker computes while the other's batch is handed out.

The batcher is a small class of its own rather than Ray Serve's ``@serve.batch``: that decorator
needs a replica context (it fails in-process, where the fast tests run this server) and counts
requests, while a request here may carry 1 or 2048 inputs.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from deployments import protocol
from deployments.config import EmbeddingConfig
from deployments.errors import APIError, invalid, unsupported
from deployments.protocol import EmbeddingRequest

logger = logging.getLogger("ray.serve")

# inputs one encode call holds at most (sorted by length across its forward passes), rounded
# down to whole passes: longer calls pad less, but an online request may wait behind one
INPUTS_PER_CALL = 256


class EmbeddingServer:
    async def __init__(self, config: EmbeddingConfig) -> None:
        from deployments import loading, model_store

        self.config = config
        self.created = int(time.time())
        started = time.monotonic()
        path = await loading.exclusive(model_store.resolve, config.source)  # off the loop, as the LLM server does
        logger.info("Embedding model %s: loading %s", config.id, model_store.describe(path))
        self.dtype = resolve_dtype(config.dtype)
        self.model = await loading.exclusive(self._load, path)
        # a model that normalises its vectors did so in its own dtype: redone in float32 below
        self.normalizes = any(type(module).__name__ == "Normalize" for module in self.model)
        # The event loop counts and decodes tokens while the batcher's thread encodes: with a
        # copy of its own, since a fast tokenizer's padding and truncation are state on the
        # shared Rust object, and counting (no padding) switched padding off under a running
        # encode ("Unable to create tensor ... activate truncation and/or padding": a 500 for
        # ~4% of single-sentence requests at 64 in flight).
        self.tokenizer = copy.deepcopy(self.model.tokenizer)
        self.max_tokens = int(self.model.max_seq_length)
        self.native_dimensions = int(self.model.get_embedding_dimension())
        if config.dimensions is not None and config.dimensions > self.native_dimensions:
            raise ValueError(f"{config.id}: dimensions {config.dimensions} > the model's {self.native_dimensions}")
        self.dimensions = config.dimensions or self.native_dimensions
        self.threads = config.worker_threads()
        self.batcher = Batcher(
            self._encode,
            max(1, INPUTS_PER_CALL // config.max_batch_size) * config.max_batch_size,
            config.batch_wait_timeout_s,
            workers=config.num_workers,
            thread_init=self._init_worker,
        )
        logger.info(
            "Embedding model %s ready (%d dims, %s, %d worker(s) x %d torch thread(s)) in %.1f s",
            config.id,
            self.dimensions,
            self.dtype,
            config.num_workers,
            self.threads,
            time.monotonic() - started,
        )

    def _load(self, path: str):
        import torch
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path, device="cpu", model_kwargs={"dtype": getattr(torch, self.dtype)})

    def _init_worker(self) -> None:
        """Runs in each encoding thread: torch's thread count is the calling thread's."""
        import torch

        torch.set_num_threads(self.threads)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.config.id,
            "created": self.created,
            "owned_by": self.config.owned_by,
            "aliases": self.config.aliases,
            "capabilities": ["embeddings"],
            "context_length": self.max_tokens,
            "dimensions": self.dimensions,
            "request_dimensions": "cut and renormalise" if self.config.allow_request_dimensions else "fixed",
            "engine": "sentence-transformers",
            "dtype": self.dtype,
            "workers": self.config.num_workers,
            "torch_threads": self.threads,
            "long_inputs": "truncate" if self.config.truncate else "reject with 400",
        }

    async def check_health(self) -> None:
        """Called by Ray Serve periodically; a raise gets the replica replaced."""
        failure = self.batcher.failure()
        if failure is not None:
            raise RuntimeError(f"embedding batcher stopped: {failure!r}")

    async def stats(self) -> dict[str, int]:
        await self.check_health()
        return {"queued": self.batcher.queue.qsize()}

    async def embed(self, req: EmbeddingRequest) -> dict[str, Any]:
        texts, counts, dims = self._prepare(req)
        vectors = await self.batcher.submit(texts)
        return self._respond(req, vectors, counts, dims)

    async def embed_many(self, requests: list[EmbeddingRequest]) -> list[dict[str, Any] | APIError]:
        """Several requests (a batch file's lines) as one: their inputs go to the batcher in one
        submission, at low priority (an online request's inputs go first), so a batch's lines are
        encoded in full forward passes sorted by length. One answer per request, in order: its
        response, or the :class:`APIError` ``embed`` would have raised for it alone."""
        prepared: list[tuple[list[str], list[int], int] | APIError] = []
        for req in requests:
            try:
                prepared.append(self._prepare(req))
            except APIError as exc:
                prepared.append(exc)
        texts = [t for p in prepared if not isinstance(p, APIError) for t in p[0]]
        vectors = await self.batcher.submit(texts, low_priority=True) if texts else None
        answers: list[dict[str, Any] | APIError] = []
        start = 0
        for req, p in zip(requests, prepared):
            if isinstance(p, APIError):
                answers.append(p)
                continue
            end = start + len(p[0])
            answers.append(self._respond(req, vectors[start:end], p[1], p[2]))
            start = end
        return answers

    def _prepare(self, req: EmbeddingRequest) -> tuple[list[str], list[int], int]:
        """A request's texts, their token counts and the dimensions it gets; raises its 400s."""
        dims = self.dimensions
        if req.dimensions is not None and req.dimensions != dims:
            if not self.config.allow_request_dimensions:
                raise unsupported("dimensions", f"model {self.config.id!r} gives {dims}-dimensional vectors only")
            if req.dimensions > dims:
                raise invalid(f"dimensions must be at most {dims} for model {self.config.id!r}.", "dimensions")
            dims = req.dimensions
        texts = [item if isinstance(item, str) else self._detokenize(item, i) for i, item in enumerate(req.inputs())]
        counts = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        for i, count in enumerate(counts):
            if count > self.max_tokens and not self.config.truncate:
                raise invalid(
                    f"input[{i}] has {count} tokens; model {self.config.id!r} takes at most "
                    f"{self.max_tokens} per input.",
                    "input",
                    "context_length_exceeded",
                )
        return texts, counts, dims

    def _respond(self, req: EmbeddingRequest, vectors: np.ndarray, counts: list[int], dims: int) -> dict[str, Any]:
        if dims != self.native_dimensions:
            vectors = vectors[:, :dims]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        used = sum(min(c, self.max_tokens) for c in counts)
        return protocol.embedding_list(req.model, vectors, req.encoding_format, used)

    def _detokenize(self, ids: list[int], index: int) -> str:
        vocab = len(self.tokenizer)
        if any(not 0 <= t < vocab for t in ids):
            raise invalid(f"input[{index}] has token ids outside the vocabulary [0, {vocab}).", "input")
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=self.config.max_batch_size, convert_to_numpy=True).astype(np.float32)
        if self.normalizes and self.dtype != "float32":  # unit length to float32's precision
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


def resolve_dtype(dtype: str, cpu_flags: set[str] | None = None) -> str:
    """The configured dtype, with ``auto`` made concrete: bfloat16 where the hardware computes it
    natively (an NVIDIA GPU that supports it; a CPU with AMX or AVX512-BF16), float32 elsewhere,
    where bfloat16 would be emulated. Embedding models run on the CPU here."""
    if dtype != "auto":
        return dtype
    flags = cpu_flags if cpu_flags is not None else _cpu_flags()
    return "bfloat16" if flags & {"amx_bf16", "avx512_bf16"} else "float32"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


class Batcher:
    """Joins concurrent ``submit(items)`` calls into batches of at most ``max_items`` items.

    Up to ``workers`` batches run at once, each in a worker thread (started by ``thread_init``);
    requests arriving while every worker is busy queue up and form the next batch, so under load
    batches fill without waiting. A request larger than
    ``max_items`` is split across batches. Low-priority submissions (a batch file's lines) wait
    behind every online one queued: a batch fills the model's idle time, online requests wait
    for at most the batch being encoded.
    """

    ONLINE, LOW = 0, 1

    def __init__(self, fn, max_items: int, wait_s: float, workers: int = 1, thread_init=None) -> None:
        self.fn = fn
        self.max_items = max_items
        self.wait_s = wait_s
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="encode", initializer=thread_init)
        # (priority, arrival, items, future): online first, then in arrival order
        self.queue: asyncio.PriorityQueue[tuple[int, int, list, asyncio.Future]] = asyncio.PriorityQueue()
        self._arrivals = itertools.count()
        self._task: asyncio.Task | None = None

    async def submit(self, items: list, low_priority: bool = False) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            # (re)start the batch loop on this event loop (an in-process server may outlive a loop)
            self.queue = asyncio.PriorityQueue()
            self._task = loop.create_task(self._run())
        priority = self.LOW if low_priority else self.ONLINE
        parts = []
        for start in range(0, len(items), self.max_items):
            future = loop.create_future()
            await self.queue.put((priority, next(self._arrivals), items[start : start + self.max_items], future))
            parts.append(future)
        return np.concatenate(await asyncio.gather(*parts))

    def failure(self) -> BaseException | None:
        """Why the batch loop stopped, if it stopped on an error."""
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        free = asyncio.Semaphore(self.workers)
        running: set[asyncio.Task] = set()
        while True:
            await free.acquire()  # a batch forms once a worker can take it: meanwhile requests queue up
            batch = [await self.queue.get()]
            size = len(batch[0][2])
            deadline = loop.time() + self.wait_s
            while size < self.max_items:
                remaining = deadline - loop.time()
                try:
                    item = self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self.queue.get(), remaining)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if size + len(item[2]) > self.max_items:
                    # it opens the next batch (back in the queue, where its arrival keeps it
                    # first of its priority, behind any online request that came meanwhile)
                    self.queue.put_nowait(item)
                    break
                batch.append(item)
                size += len(item[2])
            parts = [(items, fut) for _, _, items, fut in batch if not fut.cancelled()]
            if not parts:
                free.release()
                continue
            task = loop.create_task(self._encode(parts))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: free.release())

    async def _encode(self, parts: list[tuple[list, asyncio.Future]]) -> None:
        try:
            vectors = await asyncio.get_running_loop().run_in_executor(
                self._pool, self.fn, [x for items, _ in parts for x in items]
            )
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
            for _, fut in parts:
                if not fut.done():
                    fut.set_exception(exc)
            return
        start = 0
        for items, fut in parts:
            if not fut.done():
                fut.set_result(vectors[start : start + len(items)])
            start += len(items)
