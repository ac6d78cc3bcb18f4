"""``GET /v1/models`` and ``GET /v1/models/{id}``: the model servers' ``info()``, cached per front
replica, with a chat model's LoRA adapters listed as models of their own."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from deployments import protocol
from deployments.routes.common import ERRORS, JSONBody, app_state, as_api_error
from deployments.routing import adapter_cards

logger = logging.getLogger("ray.serve")
router = APIRouter()


@router.get("/v1/models", responses={200: {"model": protocol.ModelList}, **ERRORS})
async def list_models(request: Request) -> JSONBody:
    """``ListModelsResponse``: every model this key may use, with engine and capabilities."""
    models = app_state(request).router
    cards = []
    for route in models.routes:
        if not models.allowed(route, request.state.key):
            continue
        try:
            card = await models.card(route)
            cards += [card, *adapter_cards(card)]
        except Exception as exc:  # noqa: BLE001 - a loading model is listed without details
            logger.warning("model %s has no info yet: %r", route.id, exc)
            cards.append(protocol.model_card(route.id, 0, "local", status="loading"))
    return JSONBody(protocol.model_list(cards))


@router.get("/v1/models/{model_id:path}", responses={200: {"model": protocol.ModelCard}, **ERRORS})
async def retrieve_model(model_id: str, request: Request) -> JSONBody:
    """``Model``: one model by id or alias."""
    state = app_state(request)
    route = state.router.get(model_id, key=request.state.key)
    try:
        card = await state.router.card(route)
    except Exception as exc:  # noqa: BLE001
        raise as_api_error(exc, state.retry_after_s) from exc
    for adapter in adapter_cards(card):
        if model_id in (adapter["id"], adapter["id"].split(":", 1)[1]):
            return JSONBody(adapter)
    return JSONBody(card)
