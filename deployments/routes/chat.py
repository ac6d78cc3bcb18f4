"""``POST /v1/chat/completions`` and the legacy ``POST /v1/completions``: to the chat model's
``LLMServer`` (``chat`` / ``completion``, or their ``_stream`` twins, SSE text relayed as it comes)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from deployments import protocol
from deployments.protocol import ChatCompletionRequest, CompletionRequest
from deployments.routes.common import ERRORS, SSE, app_state
from deployments.routing import LLM

router = APIRouter()


@router.post("/v1/chat/completions", responses={200: {"model": protocol.ChatCompletion, **SSE}, **ERRORS})
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """``CreateChatCompletionRequest`` -> completion, or an SSE stream of chunks."""
    state = app_state(request)
    request.state.model = state.router.id_of(body.model)  # the metrics' model label (errors too)
    route = state.router.get(body.model, LLM, request.state.key)
    state.check_max_tokens(body.max_completion_tokens, "max_completion_tokens")
    state.check_max_tokens(body.max_tokens, "max_tokens")
    if body.stream:
        return await state.stream(route.stream_handle.chat_stream, body)
    return await state.call(route.handle.chat, body)


@router.post("/v1/completions", responses={200: {"model": protocol.TextCompletion, **SSE}, **ERRORS})
async def completions(body: CompletionRequest, request: Request) -> Response:
    """``CreateCompletionRequest`` (legacy completions)."""
    state = app_state(request)
    request.state.model = state.router.id_of(body.model)
    route = state.router.get(body.model, LLM, request.state.key)
    state.check_max_tokens(body.max_tokens, "max_tokens")
    if body.stream:
        return await state.stream(route.stream_handle.completion_stream, body)
    return await state.call(route.handle.completion, body)
