"""Hugging Face transformers engine with continuous batching.

One worker thread owns the model and runs a step loop over a dynamic batch:

* new requests are pre-filled together (left-padded) and merged into the running batch's KV
  cache between decode steps, so a request never waits for the batch to finish;
* every step decodes one token for every running request in one forward pass;
* finished or cancelled requests leave the batch at once (their cache rows are dropped).

Why not transformers' own ``ContinuousBatchingManager``: it takes one generation config for
the whole manager (no per-request seed, penalties, logit bias or logprobs, which the OpenAI
API needs per request) and targets paged attention on CUDA. The KV cache used here is
transformers' ``DynamicCache``; only its per-layer tensors are padded, merged and sliced.

The forward pass runs in the worker thread (torch releases the GIL), so the replica's event
loop keeps serving HTTP while the model computes.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import torch

from deployments.engines.base import Engine, EngineInfo, EngineOptions, GenerationChunk, LoRARef, SamplingParams
from deployments.engines.sampling import RowState, sample
from deployments.engines.tokenizer import HFTokenizer

logger = logging.getLogger("ray.serve")


@dataclass
class _Request:
    request_id: str
    prompt_ids: list[int]
    row: RowState
    outbox: asyncio.Queue
    lora: LoRARef | None = None
    cancelled: bool = False
    next_token: int | None = None  # sampled, not yet fed to the model
    done: bool = False


@dataclass
class _Batch:
    """The running batch: requests, their KV cache and the attention mask over it."""

    requests: list[_Request] = field(default_factory=list)
    cache: object | None = None  # transformers DynamicCache, batch dim = len(requests)
    mask: torch.Tensor | None = None  # [B, T] long, 0 = padding


class HFEngine(Engine):
    """Serves any causal LM that ``AutoModelForCausalLM`` loads."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self._max_model_len = options.max_model_len
        self._inbox: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._batch = _Batch()
        self._peak_running = 0
        self._adapters: set[str] = set()  # LoRA adapters loaded into the model (peft), by name
        self.tokenizer: HFTokenizer | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from deployments import loading

        self._loop = asyncio.get_running_loop()
        await loading.exclusive(self._load)
        self._thread = threading.Thread(target=self._run, name="hf-engine", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM

        if self.options.torch_threads:
            torch.set_num_threads(self.options.torch_threads)
        started = time.monotonic()
        self.tokenizer = HFTokenizer.load(self.options.model_path)
        self.model = AutoModelForCausalLM.from_pretrained(self.options.model_path, dtype=getattr(torch, self.options.dtype))
        self.model.eval()
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self._max_model_len = min(self._max_model_len or limit, limit)
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
        self.eos_ids = sorted(set(gen_eos) | set(self.tokenizer.eos_ids))
        self._generator = torch.Generator()
        self._generator.seed()
        from deployments.engines.grammar import JsonGrammars

        vocab = self.model.get_output_embeddings().weight.shape[0]
        self._grammars = JsonGrammars(self.tokenizer.hf, vocab, self.eos_ids)
        logger.info(
            "HF engine loaded %s (%s, %d threads) in %.1f s",
            self.options.model_path, self.options.dtype, torch.get_num_threads(), time.monotonic() - started,
        )

    async def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()

    async def check_health(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"HF engine failed: {self._failure!r}")
        if not self._thread.is_alive():
            raise RuntimeError("HF engine worker thread is not running")

    def info(self) -> EngineInfo:
        return self.options.info("hf", self._max_model_len, torch_threads=torch.get_num_threads())

    def stats(self) -> dict[str, int]:
        return {
            "running": len(self._batch.requests),
            "waiting": self._inbox.qsize(),
            "peak_running": self._peak_running,
        }

    # ------------------------------------------------------------------ requests
    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, lora: LoRARef | None = None
    ) -> AsyncIterator[GenerationChunk]:
        if self._failure is not None:
            raise RuntimeError(f"HF engine failed: {self._failure!r}")
        grammar = None
        if params.json_schema is not None:
            grammar = await asyncio.to_thread(self._grammars.matcher, params.json_schema)
        req = _Request(
            request_id, list(prompt_token_ids), RowState.create(params, prompt_token_ids, grammar), asyncio.Queue(), lora
        )
        self._inbox.put(req)
        self._wake.set()
        try:
            while True:
                item = await req.outbox.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Closing the generator (finish, disconnect, stop string) frees the batch slot at
            # the worker's next step.
            req.cancelled = True

    def _emit(self, req: _Request, item) -> None:
        self._loop.call_soon_threadsafe(req.outbox.put_nowait, item)

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while not self._stop.is_set():
                    admitted = self._admit()
                    if not self._batch.requests:
                        if not admitted:
                            self._wake.wait(timeout=0.5)
                            self._wake.clear()
                        continue
                    self._decode_step()
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting request
            logger.exception("HF engine worker failed")
            self._failure = exc
            error = RuntimeError(f"HF engine failed: {exc!r}")
            for req in self._batch.requests:
                self._emit(req, error)
            while not self._inbox.empty():
                self._emit(self._inbox.get_nowait(), error)

    def _admit(self) -> bool:
        """Pre-fill waiting requests (as many as fit) and merge them into the batch."""
        room = self.options.max_batch_size - len(self._batch.requests)
        new: list[_Request] = []
        while room > len(new) and not self._inbox.empty():
            req = self._inbox.get_nowait()
            if not req.cancelled and self._adapter_ready(req):
                new.append(req)
        if not new:
            return False
        width = max(len(r.prompt_ids) for r in new)
        pad = self.tokenizer.pad_id
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in new])
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in new])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **self._adapter_kwargs(new),
        )
        self._merge(new, out.past_key_values, mask)
        self._sample_and_emit(out.logits[:, -1, :], new)
        return True

    def _decode_step(self) -> None:
        batch = self._batch
        ids = torch.tensor([[r.next_token] for r in batch.requests])
        positions = batch.mask.sum(-1, keepdim=True)
        batch.mask = torch.cat([batch.mask, torch.ones_like(positions)], dim=-1)
        out = self.model(
            input_ids=ids,
            attention_mask=batch.mask,
            position_ids=positions,
            past_key_values=batch.cache,
            use_cache=True,
            logits_to_keep=1,
            **self._adapter_kwargs(batch.requests),
        )
        batch.cache = out.past_key_values
        self._sample_and_emit(out.logits[:, -1, :], batch.requests)

    def _sample_and_emit(self, logits: torch.Tensor, reqs: list[_Request]) -> None:
        live = [i for i, r in enumerate(reqs) if not r.cancelled]
        if not live:
            self._evict()
            return
        tokens, logprobs = sample(logits[live], [reqs[i].row for i in live], self.eos_ids, self._generator)
        for i, token, lp in zip(live, tokens, logprobs):
            req = reqs[i]
            req.row.output_ids.append(token)
            req.next_token = token
            finish = self._finish_reason(req, token)
            req.done = finish is not None
            self._emit(req, GenerationChunk([token], [lp] if lp is not None else None, finish))
        self._evict()

    def _finish_reason(self, req: _Request, token: int) -> str | None:
        p = req.row.params
        if token in p.stop_token_ids or (token in self.eos_ids and not p.ignore_eos):
            return "stop"
        produced = len(req.row.output_ids)
        if produced >= p.max_tokens or len(req.prompt_ids) + produced >= self._max_model_len:
            return "length"
        return None

    # ------------------------------------------------------------------ LoRA adapters (peft)
    def _adapter_ready(self, req: _Request) -> bool:
        """Load the request's adapter on first use (worker thread); False if it cannot be."""
        if req.lora is None or req.lora.name in self._adapters:
            return True
        try:
            from peft import PeftModel

            if isinstance(self.model, PeftModel):
                self.model.load_adapter(req.lora.path, adapter_name=req.lora.name)
            else:
                self.model = PeftModel.from_pretrained(self.model, req.lora.path, adapter_name=req.lora.name)
            self.model.eval()
        except Exception as exc:  # noqa: BLE001 - this request fails, the engine goes on
            logger.error("Could not load LoRA adapter %s from %s: %r", req.lora.name, req.lora.path, exc)
            self._emit(req, RuntimeError(f"LoRA adapter {req.lora.name!r} could not be loaded: {exc}"))
            return False
        self._adapters.add(req.lora.name)
        logger.info("Loaded LoRA adapter %s", req.lora.name)
        return True

    def _adapter_kwargs(self, reqs: list[_Request]) -> dict:
        """peft's mixed-adapter batch: each row names its adapter, or the base model."""
        if not self._adapters:
            return {}
        return {"adapter_names": [r.lora.name if r.lora else "__base__" for r in reqs]}

    # ------------------------------------------------------------------ KV cache bookkeeping
    def _merge(self, new: list[_Request], cache, mask: torch.Tensor) -> None:
        batch = self._batch
        if not batch.requests:
            batch.requests, batch.cache, batch.mask = list(new), cache, mask
            self._peak_running = max(self._peak_running, len(new))
            return
        old_len, new_len = batch.mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        for old_layer, new_layer in zip(batch.cache.layers, cache.layers):
            old_layer.keys = torch.cat([_left_pad(old_layer.keys, width), _left_pad(new_layer.keys, width)])
            old_layer.values = torch.cat([_left_pad(old_layer.values, width), _left_pad(new_layer.values, width)])
        batch.mask = torch.cat([_left_pad(batch.mask, width, dim=1), _left_pad(mask, width, dim=1)])
        batch.requests.extend(new)
        self._peak_running = max(self._peak_running, len(batch.requests))

    def _evict(self) -> None:
        """Drop finished and cancelled rows, then padding columns no row needs any more."""
        batch = self._batch
        keep = [i for i, r in enumerate(batch.requests) if not (r.done or r.cancelled)]
        if len(keep) == len(batch.requests):
            return
        if not keep:
            self._batch = _Batch()
            return
        index = torch.tensor(keep)
        batch.requests = [batch.requests[i] for i in keep]
        batch.mask = batch.mask[index]
        used = batch.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        batch.mask = batch.mask[:, start:]
        for layer in batch.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]


def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
