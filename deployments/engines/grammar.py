"""Structured output: JSON schemas checked for every engine (``check_schema``, used by
``Engine.check_structured``), and turned into token masks for the transformers engine, with xgrammar.

xgrammar compiles a JSON schema against the model's vocabulary into a grammar; a matcher per
request then says, before every step, which tokens keep the output a valid prefix (a bitmask
applied to the logits) and advances with the token sampled. When the document is complete only
end-of-sequence tokens remain allowed. vLLM uses the same library by default, so both engines
follow the same compact JSON grammar (no free whitespace).
"""

from __future__ import annotations

import json
from typing import Any

import torch
import xgrammar as xgr

from deployments.engines.errors import InvalidRequest


def check_schema(schema: dict[str, Any]) -> None:
    """Raise :class:`InvalidRequest` if xgrammar cannot turn ``schema`` into a grammar (fast:
    no vocabulary involved), so a request fails with a 400 before anything is generated."""
    try:
        xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    except Exception as exc:  # xgrammar raises RuntimeError/ValueError with the reason
        raise InvalidRequest(f"The JSON schema cannot be used for structured output: {exc}", "response_format") from exc


class JsonGrammars:
    """Compiles JSON-schema grammars for one tokenizer and vocabulary size (xgrammar's compiler
    keeps compiled grammars in its own thread-safe cache, so a schema is compiled once)."""

    def __init__(self, hf_tokenizer, vocab_size: int, stop_token_ids: list[int]) -> None:
        info = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self._compiler = xgr.GrammarCompiler(info, cache_enabled=True)
        self.vocab_size = vocab_size

    def matcher(self, schema: dict[str, Any]) -> "JsonMatcher":
        try:
            compiled = self._compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError with the reason
            raise InvalidRequest(f"The JSON schema cannot be used for structured output: {exc}", "response_format") from exc
        return JsonMatcher(compiled, self.vocab_size)


class JsonMatcher:
    """One request's position in its grammar."""

    def __init__(self, compiled, vocab_size: int) -> None:
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits_row: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to -inf (in place, [V] float)."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgr.apply_token_bitmask_inplace(logits_row.unsqueeze(0), self._bitmask)

    def accept(self, token_id: int) -> None:
        if not self._matcher.is_terminated():
            self._matcher.accept_token(token_id)
