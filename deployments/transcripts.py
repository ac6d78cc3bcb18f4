"""Speech-to-text answers in OpenAI's formats, from finished segments (plain dicts).

``/v1/audio/transcriptions`` and ``/v1/audio/translations`` answer in ``response_format``:
``json`` (``CreateTranscriptionResponseJson``), ``text``, ``srt``, ``vtt`` and ``verbose_json``
(``CreateTranscriptionResponseVerboseJson`` / ``CreateTranslationResponseVerboseJson``); a
streamed transcription is ``transcript.text.delta`` events and one ``transcript.text.done``
(``TranscriptTextDeltaEvent`` / ``TranscriptTextDoneEvent``). A segment is a dict with the keys
of ``TranscriptionSegment`` (and ``words``: dicts of ``TranscriptionWord``, when asked for).

Like ``protocol.py``, this module imports neither torch, vLLM, Ray nor the speech engine.
"""

from __future__ import annotations

import math
from typing import Any

from deployments import sse

TEXT_FORMATS = ("text", "srt", "vtt")


def full_text(segments: list[dict[str, Any]]) -> str:
    """The transcript: the segments' texts joined (Whisper's segments carry their own spaces)."""
    return "".join(s["text"] for s in segments).strip()


def duration_usage(duration_s: float) -> dict[str, Any]:
    """``TranscriptTextUsageDuration``: whole seconds of audio, rounded up (as OpenAI bills)."""
    return {"type": "duration", "seconds": math.ceil(duration_s)}


def render(
    segments: list[dict[str, Any]],
    response_format: str,
    *,
    task: str,
    language: str,
    duration_s: float,
    granularities: list[str] | None = None,
) -> dict[str, Any] | str:
    """The answer body: a dict for the JSON formats, a string for text, srt and vtt."""
    text = full_text(segments)
    if response_format == "text":
        return text + "\n"
    if response_format == "srt":
        return srt(segments)
    if response_format == "vtt":
        return vtt(segments)
    if response_format == "json":
        return {"text": text, "usage": duration_usage(duration_s)} if task == "transcribe" else {"text": text}
    wanted = granularities or ["segment"]
    body: dict[str, Any] = {"task": task, "language": language, "duration": round(duration_s, 3), "text": text}
    if "word" in wanted:
        body["words"] = [w for s in segments for w in s.get("words") or []]
    if "segment" in wanted:
        body["segments"] = [{k: v for k, v in s.items() if k != "words"} for s in segments]
    if task == "transcribe":
        body["usage"] = duration_usage(duration_s)
    return body


def timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS<sep>mmm`` (``,`` for SRT, ``.`` for WebVTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(segments: list[dict[str, Any]]) -> str:
    """SubRip: numbered cues, ``00:00:01,000 --> 00:00:02,500``, a blank line after each."""
    cues = [
        f"{i}\n{timestamp(s['start'], ',')} --> {timestamp(s['end'], ',')}\n{s['text'].strip()}\n"
        for i, s in enumerate(segments, 1)
    ]
    return "\n".join(cues) + ("\n" if cues else "")


def vtt(segments: list[dict[str, Any]]) -> str:
    """WebVTT: the ``WEBVTT`` header, then ``00:00:01.000 --> 00:00:02.500`` cues."""
    cues = [f"{timestamp(s['start'], '.')} --> {timestamp(s['end'], '.')}\n{s['text'].strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def delta_event(text: str) -> str:
    """One ``transcript.text.delta`` SSE event."""
    return sse.event({"type": "transcript.text.delta", "delta": text})


def done_event(text: str) -> str:
    """The ``transcript.text.done`` event, then the stream's end marker."""
    return sse.event({"type": "transcript.text.done", "text": text}) + sse.DONE
