"""Speech to text through the whole graph (``serve_config.yaml``: Whisper tiny.en in its own
deployment ``audio-whisper-tiny-en``), with the official ``openai`` client."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.spec import validate
from tests.test_audio import FIXTURES, FOX, MEETING, assert_fox, words

pytestmark = pytest.mark.graph

MODEL = "whisper-tiny-en"


def test_listed_with_its_capability(client):
    card = client.models.retrieve(MODEL).model_extra
    assert card["capabilities"] == ["audio.transcriptions"] and card["engine"] == "faster-whisper"
    assert MODEL in [m.id for m in client.models.list().data]


def test_transcriptions_with_the_official_client(client):
    with open(FIXTURES / "fox.wav", "rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(model=MODEL, file=f)
    validate(raw.http_response.json(), "CreateTranscriptionResponseJson")
    assert_fox(raw.parse().text)
    text = client.audio.transcriptions.create(model="whisper-1", file=("meeting.ogg", MEETING), response_format="text")
    assert {"meeting", "friday", "holiday", "budget"} <= set(words(text)), text
    verbose = client.audio.transcriptions.create(
        model=MODEL, file=("fox.wav", FOX), response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    assert verbose.words and verbose.segments and abs(verbose.duration - 3.29) < 0.05
    srt = client.audio.transcriptions.create(model=MODEL, file=("fox.wav", FOX), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> ")


def test_streamed_transcript(client):
    events = list(client.audio.transcriptions.create(model=MODEL, file=("fox.wav", FOX), stream=True))
    assert [e.type for e in events][-1] == "transcript.text.done"
    assert events[-1].text == "".join(e.delta for e in events[:-1])
    assert_fox(events[-1].text)


def test_errors_are_400s_naming_the_parameter(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.translations.create(model=MODEL, file=("fox.wav", FOX))
    assert e.value.body["param"] == "model" and "English-only" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.transcriptions.create(model=MODEL, file=("notes.txt", b"not audio at all\n" * 50))
    assert e.value.body["param"] == "file"
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.transcriptions.create(model="smollm2-135m-instruct", file=("fox.wav", FOX))
    assert e.value.body["param"] == "model"


async def test_concurrent_files(aclient):
    texts = await asyncio.gather(*(aclient.audio.transcriptions.create(model=MODEL, file=("fox.wav", FOX)) for _ in range(4)))
    for t in texts:
        assert_fox(t.text)
