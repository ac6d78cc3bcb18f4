"""``POST /v1/embeddings``: ``CreateEmbeddingRequest``.

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from deployments.protocol.common import MAX_EMBEDDING_INPUTS, RequestModel, prompt_list


EmbeddingInput = Union[
    str,
    Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)],
    Annotated[list[int], Field(min_length=1)],
    Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)],
]


class EmbeddingRequest(RequestModel):
    """``POST /v1/embeddings`` (``CreateEmbeddingRequest``)."""

    model: str = Field(description="Id of an embedding model listed by GET /v1/models.", examples=["all-minilm-l6-v2"])
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _no_empty_strings(cls, value):
        items = [value] if isinstance(value, str) else value
        for i, item in enumerate(items):
            if isinstance(item, str) and item == "":
                raise ValueError(f"input[{i}] is an empty string; embeddings need some text")
        return value

    def inputs(self) -> list[str | list[int]]:
        """The input as a list of independent items (text or token ids)."""
        return prompt_list(self.input)
