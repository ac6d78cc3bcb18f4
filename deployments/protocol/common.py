"""Pieces every request model shares: the strict base model, local bounds, the sampling fields of chat and legacy completions, ``stream_options``.

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.errors import invalid


# Local bounds (OpenAI allows 128 choices; on two cores more than this is a denial of service).
MAX_N = 16
MAX_STOP = 4
MAX_EMBEDDING_INPUTS = 2048


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StreamOptions(RequestModel):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


Stop = Union[str, Annotated[list[str], Field(min_length=1, max_length=MAX_STOP)], None]


class SamplingFields(RequestModel):
    """Fields shared by chat and legacy completions, with the spec's bounds."""

    model: str = Field(description="Id of a model listed by GET /v1/models.", examples=["smollm2-135m-instruct"])
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_N)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, int] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    user: str | None = None
    # extras (vLLM's names)
    top_k: int | None = Field(None, ge=-1, description="extra: sample from the k likeliest tokens")
    min_p: float | None = Field(None, ge=0, le=1, description="extra: drop tokens below min_p * top")
    repetition_penalty: float | None = Field(None, gt=0, le=2, description="extra: HF-style")
    min_tokens: int | None = Field(None, ge=0, description="extra: suppress EOS before this many")
    ignore_eos: bool | None = Field(None, description="extra: keep generating past EOS")
    stop_token_ids: list[int] | None = Field(None, description="extra: token ids that stop")

    @field_validator("logit_bias")
    @classmethod
    def _check_bias(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for key, bias in (value or {}).items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"bias for token {key} must be in [-100, 100], got {bias}")
        return value

    @model_validator(mode="after")
    def _check_stream_options(self):
        check_stream_options(self)
        return self

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def check_stream_options(request) -> None:
    """``stream_options`` belongs to a streamed request only (chat, completions, Responses)."""
    if request.stream_options is not None and not request.stream:
        raise invalid("stream_options is only allowed when stream is true.", "stream_options")


def prompt_list(value) -> list[str | list[int]]:
    """A ``prompt`` or ``input`` (a text, texts, token ids, or lists of token ids) as a list of
    independent items, each a text or a list of token ids."""
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        return [list(value)]
    return list(value)
