"""``POST /v1/embeddings``: to the embedding model's ``EmbeddingServer.embed`` (its batcher
batches across requests)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from deployments import protocol
from deployments.protocol import EmbeddingRequest
from deployments.routes.common import ERRORS, app_state
from deployments.routing import EMBEDDING

router = APIRouter()


@router.post("/v1/embeddings", responses={200: {"model": protocol.EmbeddingList}, **ERRORS})
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    """``CreateEmbeddingRequest`` -> ``CreateEmbeddingResponse``."""
    state = app_state(request)
    request.state.model = state.router.id_of(body.model)
    route = state.router.get(body.model, EMBEDDING, request.state.key)
    return await state.call(route.handle.embed, body)
