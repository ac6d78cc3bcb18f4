"""``/v1/responses``: translated to a chat completion of the model (``deployments/responses.py``
does the translation both ways); responses are stored per front replica for
``previous_response_id``, ``GET`` and ``DELETE``."""

from __future__ import annotations

import time
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from deployments import responses, sse
from deployments.protocol import ResponsesRequest
from deployments.routes.common import ERRORS, STREAM_HEADERS, AppState, JSONBody, app_state, as_api_error, error_response
from deployments.routing import LLM, ModelRoute

router = APIRouter()

# The Responses API's stream: typed events, each with an ``event:`` name and a JSON ``data:`` line.
RESPONSE_EVENTS = {
    "content": {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                "required": ["event", "data"],
            }
        }
    },
    "description": "a response object, or an SSE stream of typed events when stream is true",
}


@router.post("/v1/responses", responses={200: RESPONSE_EVENTS, **ERRORS})
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    """``CreateResponse``: text or message input, instructions, function tools, text formats,
    streaming, ``previous_response_id``."""
    state = app_state(request)
    request.state.model = state.router.id_of(body.model)
    route = state.router.get(body.model, LLM, request.state.key)
    state.check_max_tokens(body.max_output_tokens, "max_output_tokens")
    history = state.responses.get(body.previous_response_id, "previous_response_id").messages if body.previous_response_id else []
    chat, conversation = responses.to_chat(body, history)
    rid, created = responses.new_id("resp"), time.time()
    if body.stream:
        return await _stream(state, route, body, request, chat, conversation, rid, created)
    try:
        completion = await route.handle.chat.remote(chat)
    except Exception as exc:  # noqa: BLE001
        return error_response(responses.rename_param(as_api_error(exc, state.retry_after_s)))
    request.state.usage = completion["usage"]  # for the metrics: this route builds its own answer
    response = responses.from_chat(body, rid, created, completion)
    if body.store is not False:
        state.responses.put(response, conversation + responses.as_chat_messages(response["output"]))
    return JSONBody(response)


async def _stream(state: AppState, route: ModelRoute, body, request: Request, chat, conversation, rid: str, created: float) -> Response:
    try:
        iterator = route.stream_handle.chat_stream.remote(chat).__aiter__()
        first = await iterator.__anext__()
    except Exception as exc:  # noqa: BLE001 - a request error before the stream: a real 4xx
        return error_response(responses.rename_param(as_api_error(exc, state.retry_after_s)))
    translator = responses.StreamTranslator(body, rid, created)

    async def events() -> AsyncIterator[str]:
        for event in translator.start():
            yield event
        async for event in _translated(translator, first, iterator, state.retry_after_s):
            yield event
        if translator.failed:
            return
        for event in translator.finish():
            yield event
        request.state.usage = translator.usage
        if body.store is not False:
            state.responses.put(translator.response, conversation + responses.as_chat_messages(translator.response["output"]))

    return StreamingResponse(events(), media_type="text/event-stream", headers=STREAM_HEADERS)


async def _translated(translator, first: str, iterator, retry_after_s: int) -> AsyncIterator[str]:
    """The chat stream's chunks as Responses events; an error ends it with the error's events."""
    message: str | None = first
    try:
        while message is not None:
            for payload in sse.data_payloads(message):
                if payload is sse.DONE:
                    continue
                events = translator.error(payload) if "error" in payload else translator.feed(payload)
                for event in events:
                    yield event
                if translator.failed:
                    return
            message = await anext(iterator, None)
    except Exception as exc:  # noqa: BLE001 - the client gets an error event, not a cut stream
        for event in translator.error(as_api_error(exc, retry_after_s).body()):
            yield event


@router.get("/v1/responses/{response_id}", responses={**ERRORS})
async def get_response(response_id: str, request: Request) -> JSONBody:
    """A stored response."""
    return JSONBody(app_state(request).responses.get(response_id).response)


@router.delete("/v1/responses/{response_id}", responses={**ERRORS})
async def delete_response(response_id: str, request: Request) -> JSONBody:
    """Forget a stored response."""
    app_state(request).responses.delete(response_id)
    return JSONBody({"id": response_id, "object": "response", "deleted": True})
