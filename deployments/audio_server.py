"""The speech-to-text model server: ``/v1/audio/transcriptions`` and ``/v1/audio/translations``
on faster-whisper (CTranslate2), for any faster-whisper model folder (English-only or
multilingual).

Audio is decoded here with PyAV (FFmpeg's libraries, the decoder faster-whisper itself uses):
wav, mp3, m4a/mp4, ogg, webm, flac and whatever else FFmpeg reads, resampled to 16 kHz mono.
Decoding stops as soon as the audio is longer than ``max_duration_s``, so a small file that
unpacks into hours of audio costs no more than the limit.

Concurrency: :class:`TurnPool` lets ``num_workers`` steps compute at once (CTranslate2 runs that
many transcriptions in parallel, each on ``cpu_threads`` threads, outside the GIL). A step is a
file's decoding or one of its 30-second windows; after each step the request queues again, placed
by how much of its audio is done, so a long file lets the short ones that arrive after it go
first instead of holding a worker until it ends.
"""

from __future__ import annotations

import asyncio
import heapq
import io
import itertools
import logging
import time
from typing import Any, AsyncIterator

import numpy as np

from deployments import transcripts
from deployments.config import AudioConfig
from deployments.errors import APIError, invalid
from deployments.protocol import TranscriptionRequest, TranslationRequest

logger = logging.getLogger("ray.serve")

SAMPLE_RATE = 16_000  # what Whisper models take
# temperature 0 means OpenAI's (and Whisper's) fallback: retry a window at higher temperatures
# when its decoding looks wrong (compression ratio, log probability)
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class AudioServer:
    async def __init__(self, config: AudioConfig) -> None:
        from deployments import loading, model_store

        self.config = config
        self.created = int(time.time())
        started = time.monotonic()
        path = await loading.exclusive(model_store.resolve, config.source)
        logger.info("Audio model %s: loading %s", config.id, model_store.describe(path))
        self.model = await loading.exclusive(self._load, path)
        self.multilingual = bool(self.model.model.is_multilingual)
        self.languages = sorted(self.model.supported_languages)
        self.pool = TurnPool(config.num_workers)
        logger.info(
            "Audio model %s ready (%s) in %.1f s",
            config.id, "multilingual" if self.multilingual else "English-only", time.monotonic() - started,
        )

    def _load(self, path: str):
        from faster_whisper import WhisperModel

        c = self.config
        return WhisperModel(path, device=c.device, compute_type=c.compute_type, cpu_threads=c.cpu_threads, num_workers=c.num_workers)

    def info(self) -> dict[str, Any]:
        capabilities = ["audio.transcriptions"] + (["audio.translations"] if self.multilingual else [])
        return {
            "id": self.config.id,
            "created": self.created,
            "owned_by": self.config.owned_by,
            "aliases": self.config.aliases,
            "capabilities": capabilities,
            "engine": "faster-whisper",
            "multilingual": self.multilingual,
            "languages": self.languages,
            "max_file_bytes": self.config.max_file_bytes,
            "max_duration_s": self.config.max_duration_s,
        }

    async def check_health(self) -> None:
        """Called by Ray Serve periodically; nothing runs in the background to fail."""

    async def stats(self) -> dict[str, int]:
        return {"running": self.pool.running, "queued": self.pool.queued}

    # ------------------------------------------------------------------ the public methods
    async def transcribe(self, req: TranscriptionRequest, audio: bytes) -> dict[str, Any] | str:
        """A finished transcription in ``req.response_format`` (a dict, or text for text/srt/vtt)."""
        return await self._answer(req, audio, "transcribe")

    async def translate(self, req: TranslationRequest, audio: bytes) -> dict[str, Any] | str:
        """The audio's speech in English (multilingual models only)."""
        if not self.multilingual:
            raise invalid(
                f"The model '{req.model}' is English-only; translations need a multilingual model.", "model", "model_not_supported"
            )
        return await self._answer(req, audio, "translate")

    async def transcribe_stream(self, req: TranscriptionRequest, audio: bytes) -> AsyncIterator[str]:
        """``transcript.text.delta`` events, one a segment as its window is decoded, then
        ``transcript.text.done``. Request errors raise before the first event."""
        steps = self._steps(req, audio, "transcribe")
        await anext(steps)  # decoded and checked: errors so far are the request's
        texts: list[str] = []
        async for segment in steps:
            text = segment["text"] if texts else segment["text"].lstrip()
            texts.append(text)
            yield transcripts.delta_event(text)
        yield transcripts.done_event("".join(texts).rstrip())

    # ------------------------------------------------------------------ the work
    async def _answer(self, req: TranslationRequest, audio: bytes, task: str) -> dict[str, Any] | str:
        steps = self._steps(req, audio, task)
        info = await anext(steps)
        segments = [segment async for segment in steps]
        return transcripts.render(
            segments,
            req.response_format,
            task=task,
            language="en" if task == "translate" else info.language,
            duration_s=info.duration,
            granularities=getattr(req, "timestamp_granularities", None),
        )

    async def _steps(self, req: TranslationRequest, audio: bytes, task: str) -> AsyncIterator[Any]:
        """The transcription as pool steps: first the engine's info (language, duration), then
        each segment (a dict) as its window is decoded."""
        if len(audio) > self.config.max_file_bytes:
            raise invalid(
                f"The audio file is {len(audio)} bytes; model '{req.model}' takes files up to "
                f"max_file_bytes={self.config.max_file_bytes}.",
                "file",
                "file_too_large",
            )
        options = self._options(req, task)
        samples = await self.pool.step(0.0, decode, audio, self.config.max_duration_s)
        segments, info = await self.pool.step(0.0, lambda: self.model.transcribe(samples, **options))
        yield info
        segments, served = iter(segments), 0.0
        while (segment := await self.pool.step(served, next, segments, None)) is not None:
            served = segment.end
            yield segment_dict(segment)

    def _options(self, req: TranslationRequest, task: str) -> dict[str, Any]:
        language = getattr(req, "language", None)
        if language is not None:
            language = language.strip().lower()
            if not self.multilingual and language != "en":
                raise invalid(f"The model '{req.model}' is English-only; language must be 'en' or left out.", "language")
            if language not in self.languages:
                raise invalid(f"Unsupported language {language!r}: give an ISO-639-1 code such as 'en'.", "language")
        elif not self.multilingual:
            language = "en"
        granularities = getattr(req, "timestamp_granularities", None) or []
        return {
            "language": language,
            "task": task,
            "initial_prompt": req.prompt or None,
            "temperature": FALLBACK_TEMPERATURES if req.temperature == 0 else req.temperature,
            "beam_size": self.config.beam_size,
            "word_timestamps": "word" in granularities,
        }


def segment_dict(segment) -> dict[str, Any]:
    """A faster-whisper segment as ``TranscriptionSegment`` (with ``words`` if it has them)."""
    out = {
        "id": segment.id - 1,  # faster-whisper counts from 1, OpenAI from 0
        "seek": segment.seek,
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": float(segment.temperature or 0.0),
        "avg_logprob": float(segment.avg_logprob),
        "compression_ratio": float(segment.compression_ratio),
        "no_speech_prob": float(segment.no_speech_prob),
    }
    if segment.words:
        out["words"] = [{"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)} for w in segment.words]
    return out


def decode(data: bytes, max_duration_s: float) -> np.ndarray:
    """Any audio FFmpeg reads -> 16 kHz mono float32 samples; a 400 naming ``file`` for what
    is not audio, holds no sound, or is longer than ``max_duration_s``."""
    import av

    if not data:
        raise invalid("The audio file is empty.", "file", "invalid_file_format")
    limit = int(max_duration_s * SAMPLE_RATE)
    too_long = invalid(
        f"The audio is longer than max_duration_s={max_duration_s:g} seconds, the limit of this model.", "file", "audio_too_long"
    )
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise invalid("The file has no audio stream.", "file", "invalid_file_format")
            stream = container.streams.audio[0]
            if container.duration is not None and container.duration / 1_000_000 > max_duration_s + 1:
                raise too_long  # the header says so: no need to decode
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in [*resampler.resample(frame)]:
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += chunk.size
                if total > limit:
                    raise too_long
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1))
    except APIError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever FFmpeg makes of the client's bytes is the file's fault
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise invalid(f"The file could not be decoded as audio ({reason}).", "file", "invalid_file_format") from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    if samples.size == 0:
        raise invalid("The audio file holds no sound.", "file", "invalid_file_format")
    if samples.size > limit:
        raise too_long
    return samples.astype(np.float32) / 32768.0


class TurnPool:
    """At most ``size`` steps compute at once, each in a worker thread. A waiting step's place is
    the audio its request has had transcribed so far (seconds), then its arrival: a new file's
    steps go before those of a file far into its hour, so short files are not stuck behind long
    ones, and among equals the first come is served first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.running = 0
        self._waiting: list[tuple[float, int, asyncio.Future]] = []
        self._arrivals = itertools.count()

    @property
    def queued(self) -> int:
        return sum(1 for *_, turn in self._waiting if not turn.done())

    async def step(self, served_s: float, fn, *args) -> Any:
        if self.running < self.size and not self.queued:
            self.running += 1
        else:
            turn = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (served_s, next(self._arrivals), turn))
            try:
                await turn  # handed a running slot by the step that finished
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._hand_over()
                raise
        try:
            return await asyncio.to_thread(fn, *args)
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """A slot is free: to the first waiting step, else back to the pool."""
        while self._waiting:
            *_, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1
