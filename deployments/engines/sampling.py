"""Next-token selection for a batch of rows with different OpenAI sampling parameters.

Used by the transformers engine (vLLM has its own sampler). Every row may ask for something
else -- greedy or sampled, its own seed, penalties, logit bias, logprobs -- so the work is
vectorised over the rows that need each step and skipped entirely when no row does.

Definitions follow OpenAI's documentation:
  presence_penalty:  logit[t] -= presence_penalty  if t occurred in the output so far
  frequency_penalty: logit[t] -= frequency_penalty * count of t in the output so far
and, as an extra, Hugging Face's repetition_penalty over prompt and output (divide positive
logits, multiply negative ones). Logprobs are the model's own log-probabilities, before any of
these adjustments (vLLM's default "raw" logprobs). A row with a grammar (structured output)
gets the grammar's token mask after all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from deployments.engines.base import SamplingParams, TokenLogprob

GREEDY_EPS = 1e-5


@dataclass
class RowState:
    """Per-request sampling state that lives as long as the request."""

    params: SamplingParams
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    grammar: Any = None  # a grammar.JsonMatcher for structured output, or None

    @classmethod
    def create(cls, params: SamplingParams, prompt_ids: list[int], grammar: Any = None) -> "RowState":
        gen = None
        if params.seed is not None:
            gen = torch.Generator()
            gen.manual_seed(params.seed & 0xFFFF_FFFF_FFFF_FFFF)
        return cls(params=params, prompt_ids=list(prompt_ids), generator=gen, grammar=grammar)


def sample(
    logits: torch.Tensor,
    rows: list[RowState],
    eos_ids: list[int],
    default_generator: torch.Generator | None = None,
) -> tuple[list[int], list[TokenLogprob | None]]:
    """Choose one token per row of ``logits`` ([B, V], any float dtype)."""
    x = logits.float()
    batch, vocab = x.shape
    want_logprobs = [r.params.logprobs is not None for r in rows]
    raw_logprobs = torch.log_softmax(x, dim=-1) if any(want_logprobs) else None
    x = _adjust(x.clone(), rows, eos_ids, vocab)

    temps = torch.tensor([r.params.temperature for r in rows])
    greedy = temps < GREEDY_EPS
    tokens = torch.empty(batch, dtype=torch.long)
    if greedy.any():
        tokens[greedy] = x[greedy].argmax(dim=-1)
    sampled = (~greedy).nonzero().flatten().tolist()
    if sampled:
        probs = _filtered_probs(x[sampled] / temps[sampled, None], [rows[i].params for i in sampled])
        for j, i in enumerate(sampled):
            gen = rows[i].generator or default_generator
            tokens[i] = torch.multinomial(probs[j], 1, generator=gen)[0]

    chosen = tokens.tolist()
    for row, token in zip(rows, chosen):
        if row.grammar is not None:
            row.grammar.accept(token)
    logprobs: list[TokenLogprob | None] = [None] * batch
    if raw_logprobs is not None:
        for i, row in enumerate(rows):
            if want_logprobs[i]:
                logprobs[i] = _token_logprob(raw_logprobs[i], chosen[i], row.params.logprobs or 0)
    return chosen, logprobs


def _adjust(x: torch.Tensor, rows: list[RowState], eos_ids: list[int], vocab: int) -> torch.Tensor:
    """Logit bias, penalties and EOS suppression, in place, only for rows that ask."""
    for i, row in enumerate(rows):
        p = row.params
        if p.logit_bias:
            ids = torch.tensor([t for t in p.logit_bias if 0 <= t < vocab], dtype=torch.long)
            vals = torch.tensor([float(p.logit_bias[t]) for t in p.logit_bias if 0 <= t < vocab])
            x[i, ids] += vals
        if (p.presence_penalty or p.frequency_penalty) and row.output_ids:
            counts = torch.bincount(torch.tensor(row.output_ids), minlength=vocab)[:vocab].float()
            x[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(row.prompt_ids) | set(row.output_ids)), dtype=torch.long)
            seen = seen[seen < vocab]
            vals = x[i, seen]
            x[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if row.grammar is not None:
            # last, and instead of min_tokens: the grammar alone decides when the document ends
            row.grammar.mask(x[i])
        elif len(row.output_ids) < p.min_tokens:
            x[i, [t for t in eos_ids + p.stop_token_ids if t < vocab]] = float("-inf")
    return x


def _filtered_probs(scaled: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Softmax after top-k, top-p and min-p filtering (each only where some row uses it)."""
    vocab = scaled.shape[-1]
    top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params])
    if (top_k < vocab).any():
        kth = torch.topk(scaled, int(top_k.max()), dim=-1).values.gather(1, (top_k - 1)[:, None])
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    top_p = torch.tensor([p.top_p for p in params])
    if (top_p < 1.0).any():
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the first always stays.
        drop = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p[:, None]
        drop[:, 0] = False
        scaled = scaled.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = torch.softmax(scaled, dim=-1)
    min_p = torch.tensor([p.min_p for p in params])
    if (min_p > 0).any():
        cutoff = probs.max(dim=-1, keepdim=True).values * min_p[:, None]
        probs = probs.masked_fill(probs < cutoff, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def _token_logprob(row_logprobs: torch.Tensor, token: int, k: int) -> TokenLogprob:
    top: list[tuple[int, float]] = []
    if k > 0:
        values, ids = torch.topk(row_logprobs, k)
        top = list(zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token_id=token, logprob=float(row_logprobs[token]), top=top)
