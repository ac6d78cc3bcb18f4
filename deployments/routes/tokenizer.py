"""``POST /tokenize`` and ``/detokenize`` (vLLM's routes and shapes; also under ``/v1``): to the
chat model's ``LLMServer.tokenize`` / ``detokenize``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from deployments.protocol import DetokenizeRequest, TokenizeRequest
from deployments.routes.common import ERRORS, app_state
from deployments.routing import LLM

router = APIRouter()


@router.post("/tokenize", responses={**ERRORS})
@router.post("/v1/tokenize", include_in_schema=False)
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    """A prompt, or chat messages as the model's template renders them, to token ids."""
    return await _to_model(request, body, "tokenize")


@router.post("/detokenize", responses={**ERRORS})
@router.post("/v1/detokenize", include_in_schema=False)
async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
    """Token ids to text."""
    return await _to_model(request, body, "detokenize")


async def _to_model(request: Request, body: TokenizeRequest | DetokenizeRequest, method: str) -> Response:
    state = app_state(request)
    request.state.model = state.router.id_of(body.model)
    route = state.router.get(body.model, LLM, request.state.key)
    return await state.call(getattr(route.handle, method), body)
