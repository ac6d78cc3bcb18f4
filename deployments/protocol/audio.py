"""``POST /v1/audio/transcriptions`` and ``/translations``: ``CreateTranscriptionRequest``, ``CreateTranslationRequest`` (the form's fields).

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from deployments.errors import invalid, unsupported
from deployments.protocol.common import RequestModel


AudioResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


class TranslationRequest(RequestModel):
    """``POST /v1/audio/translations`` (``CreateTranslationRequest``), the multipart form's fields
    but ``file`` (the audio travels beside the request)."""

    model: str = Field(description="Id of a speech-to-text model listed by GET /v1/models.", examples=["whisper-tiny-en"])
    prompt: str | None = None
    response_format: AudioResponseFormat | Literal["diarized_json"] = "json"
    temperature: float = Field(0.0, ge=0, le=1)

    @field_validator("response_format")
    @classmethod
    def _no_diarization(cls, value):
        if value == "diarized_json":
            raise unsupported("response_format", "diarized_json needs a diarization model; use json, text, srt, verbose_json or vtt")
        return value


class TranscriptionRequest(TranslationRequest):
    """``POST /v1/audio/transcriptions`` (``CreateTranscriptionRequest``), as above."""

    language: str | None = Field(None, description="ISO-639-1 code of the audio's language (default: detected).")
    timestamp_granularities: list[Literal["word", "segment"]] | None = Field(None, min_length=1)
    stream: bool | None = False
    include: list[str] | None = None
    chunking_strategy: str | None = None

    @field_validator("include")
    @classmethod
    def _no_include(cls, value):
        if value:
            raise unsupported("include", "Whisper models give no token logprobs")
        return value

    @field_validator("chunking_strategy")
    @classmethod
    def _no_chunking(cls, value):
        if value is not None:
            raise unsupported("chunking_strategy", "audio is decoded in Whisper's own 30-second windows")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.timestamp_granularities and self.response_format != "verbose_json":
            raise invalid("timestamp_granularities needs response_format 'verbose_json'.", "timestamp_granularities")
        if self.stream and self.response_format not in ("json", "text"):
            raise invalid(
                f"stream=true gives transcript.text.* events; response_format '{self.response_format}' cannot be streamed "
                "(use json or text).",
                "stream",
            )
        return self
