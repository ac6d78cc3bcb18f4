"""``/v1/audio/transcriptions`` and ``/v1/audio/translations``: multipart forms to a speech-to-text
model's server (``deployments/audio_server.py``), reached through its handle like every model.

The form is read here: ``file`` (the upload's bytes travel to the model server beside the
request), the other fields validated by ``protocol.TranscriptionRequest`` /
``protocol.TranslationRequest``. List fields come as ``name[]`` (what the official clients send)
or ``name``; a field given twice, a file where a value belongs, or a name the API does not have
is a 400 naming it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from deployments import protocol
from deployments.routes.common import ERRORS, app_state
from deployments.routing import AUDIO
from deployments.errors import invalid

LIST_FIELDS = ("timestamp_granularities", "include")
MAX_FIELDS = 32


def _form_schema(fields: dict[str, Any]) -> dict[str, Any]:
    """The multipart request body for the OpenAPI document."""
    properties = {"file": {"type": "string", "format": "binary"}, **fields}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": {"type": "object", "properties": properties, "required": ["file", "model"]}}},
        }
    }


_FORMATS = {"type": "string", "enum": ["json", "text", "srt", "verbose_json", "vtt"]}
_TRANSLATION_FIELDS = {
    "model": {"type": "string"},
    "prompt": {"type": "string"},
    "response_format": _FORMATS,
    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
}
_TRANSCRIPTION_FIELDS = {
    **_TRANSLATION_FIELDS,
    "language": {"type": "string"},
    "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]}},
    "stream": {"type": "boolean"},
}
ANSWERS = {
    200: {
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/plain": {"schema": {"type": "string"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
        "description": "the transcript in response_format (json / verbose_json, or text / srt / vtt as text), "
        "or transcript.text.* events when stream is true",
    },
    **ERRORS,
}


async def read_form(request: Request) -> tuple[dict[str, Any], bytes]:
    """The form's fields (``name[]`` lists gathered) and the bytes of its ``file``."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise invalid("Send the audio as multipart/form-data, with the file in 'file'.", "file", "invalid_content_type")
    try:
        form = await request.form(max_files=1, max_fields=MAX_FIELDS)
    except (StarletteHTTPException, MultiPartException, ValueError, KeyError) as exc:
        raise invalid(f"The multipart body could not be read: {getattr(exc, 'detail', exc)}", "file") from None
    fields: dict[str, Any] = {}
    audio: bytes | None = None
    try:
        for key, value in form.multi_items():
            name = key.removesuffix("[]")
            if name == "file":
                if not isinstance(value, UploadFile):
                    raise invalid("'file' must be a file upload (the audio's bytes), not a text field.", "file")
                audio = await value.read()
            elif isinstance(value, UploadFile):
                raise invalid(f"'{key}' must be a text field, not a file.", name)
            elif name in LIST_FIELDS:
                fields.setdefault(name, []).append(value)
            elif name in fields:
                raise invalid(f"'{name}' is given more than once.", name)
            else:
                fields[name] = value
    finally:
        await form.close()
    if audio is None:
        raise invalid("Missing required parameter: 'file'.", "file", "missing_required_parameter")
    return fields, audio


def parse(model: type, fields: dict[str, Any]):
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise protocol.validation_error(exc) from None


router = APIRouter()


@router.post("/v1/audio/transcriptions", responses=ANSWERS, openapi_extra=_form_schema(_TRANSCRIPTION_FIELDS))
async def transcriptions(request: Request) -> Response:
    """``CreateTranscriptionRequest`` -> the transcript in ``response_format``, or with
    ``stream=true`` ``transcript.text.delta`` events and ``transcript.text.done``."""
    state = app_state(request)
    fields, audio = await read_form(request)
    body = parse(protocol.TranscriptionRequest, fields)
    request.state.model = state.router.id_of(body.model)
    route = state.router.get(body.model, AUDIO, request.state.key)
    if body.stream:
        return await state.stream(route.stream_handle.transcribe_stream, body, audio)
    return await state.call(route.handle.transcribe, body, audio)


@router.post("/v1/audio/translations", responses=ANSWERS, openapi_extra=_form_schema(_TRANSLATION_FIELDS))
async def translations(request: Request) -> Response:
    """``CreateTranslationRequest`` -> English text in ``response_format`` (multilingual models)."""
    state = app_state(request)
    fields, audio = await read_form(request)
    body = parse(protocol.TranslationRequest, fields)
    request.state.model = state.router.id_of(body.model)
    route = state.router.get(body.model, AUDIO, request.state.key)
    return await state.call(route.handle.translate, body, audio)
