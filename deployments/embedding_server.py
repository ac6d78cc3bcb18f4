"""The embedding model server: OpenAI ``/v1/embeddings`` on sentence-transformers.

Concurrent requests are encoded together: each request's inputs join one batch, sized in
*inputs* (not requests) and closed after ``batch_wait_timeout_s``. A batch holds up to
``BATCHES_PER_CALL`` forward passes of ``max_batch_size`` inputs: sentence-transformers sorts a
call's inputs by length before cutting them into passes, so under load each pass pads its inputs
to a similar length instead of to the longest of a mixed bunch (measured: the replica's CPU per
16-sentence request fell by about 40% in a quick run, BENCHMARKS.md). Encoding runs in a worker thread so the
event loop keeps accepting requests while a batch computes.

The batcher is a small class of its own rather than Ray Serve's ``@serve.batch``: that decorator
needs a replica context (it fails in-process, where the fast tests run this server) and counts
requests, while a request here may carry 1 or 2048 inputs.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any

import numpy as np

from deployments import protocol
from deployments.config import EmbeddingConfig
from deployments.errors import invalid, unsupported
from deployments.protocol import EmbeddingRequest

logger = logging.getLogger("ray.serve")

# forward passes one encode call may hold (inputs sorted by length across them)
BATCHES_PER_CALL = 4


class EmbeddingServer:
    async def __init__(self, config: EmbeddingConfig) -> None:
        from deployments import loading, model_store

        self.config = config
        self.created = int(time.time())
        started = time.monotonic()
        path = await loading.exclusive(model_store.resolve, config.source)  # off the loop, as the LLM server does
        logger.info("Embedding model %s: loading %s", config.id, model_store.describe(path))
        self.model = await loading.exclusive(self._load, path)
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
        self.batcher = Batcher(self._encode, config.max_batch_size * BATCHES_PER_CALL, config.batch_wait_timeout_s)
        logger.info("Embedding model %s ready (%d dims) in %.1f s", config.id, self.dimensions, time.monotonic() - started)

    def _load(self, path: str):
        import torch
        from sentence_transformers import SentenceTransformer

        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        return SentenceTransformer(path, device="cpu")

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
        vectors = await self.batcher.submit(texts)
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
        return self.model.encode(texts, batch_size=self.config.max_batch_size, convert_to_numpy=True).astype(np.float32)


class Batcher:
    """Joins concurrent ``submit(items)`` calls into batches of at most ``max_items`` items.

    One batch runs at a time, in a worker thread; requests arriving meanwhile queue up and form
    the next batch, so under load batches fill without waiting. A request larger than
    ``max_items`` is split across batches.
    """

    def __init__(self, fn, max_items: int, wait_s: float) -> None:
        self.fn = fn
        self.max_items = max_items
        self.wait_s = wait_s
        self.queue: asyncio.Queue[tuple[list, asyncio.Future]] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def submit(self, items: list) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            # (re)start the batch loop on this event loop (an in-process server may outlive a loop)
            self.queue = asyncio.Queue()
            self._task = loop.create_task(self._run())
        parts = []
        for start in range(0, len(items), self.max_items):
            future = asyncio.get_running_loop().create_future()
            await self.queue.put((items[start : start + self.max_items], future))
            parts.append(future)
        return np.concatenate(await asyncio.gather(*parts))

    def failure(self) -> BaseException | None:
        """Why the batch loop stopped, if it stopped on an error."""
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    async def _run(self) -> None:
        carry: tuple[list, asyncio.Future] | None = None
        while True:
            batch = [carry or await self.queue.get()]
            carry = None
            size = len(batch[0][0])
            deadline = asyncio.get_running_loop().time() + self.wait_s
            while size < self.max_items:
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    item = self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self.queue.get(), remaining)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if size + len(item[0]) > self.max_items:
                    carry = item
                    break
                batch.append(item)
                size += len(item[0])
            batch = [(items, fut) for items, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            try:
                vectors = await asyncio.to_thread(self.fn, [x for items, _ in batch for x in items])
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            start = 0
            for items, fut in batch:
                if not fut.done():
                    fut.set_result(vectors[start : start + len(items)])
                start += len(items)
