"""``POST /v1/completions``: ``CreateCompletionRequest`` (legacy completions).

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field, model_validator

from deployments.errors import invalid, unsupported
from deployments.protocol.common import MAX_N, SamplingFields, prompt_list


Prompt = Union[
    str,
    Annotated[list[str], Field(min_length=1)],
    Annotated[list[int], Field(min_length=1)],
    Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)],
]


class CompletionRequest(SamplingFields):
    """``POST /v1/completions`` (``CreateCompletionRequest``)."""

    prompt: Prompt
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = False
    best_of: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None

    @model_validator(mode="after")
    def _check_completion(self):
        if self.suffix:
            raise unsupported("suffix", "the served models have no fill-in-the-middle mode")
        if self.best_of is not None:
            if self.best_of < (self.n or 1):
                raise invalid(f"best_of ({self.best_of}) must be at least n ({self.n or 1}).", "best_of")
            if self.best_of > MAX_N:
                raise invalid(f"best_of is at most {MAX_N} on this server.", "best_of")
            if self.stream and self.best_of > (self.n or 1):
                raise invalid("best_of greater than n cannot be streamed.", "best_of")
        if self.echo and self.stream:
            raise unsupported("echo", "echo is not available with stream")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of independent prompts (text or token ids)."""
        return prompt_list(self.prompt)
