"""``GET /health``: every model's readiness (``GET /metrics`` is ``deployments/metrics.py``'s)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from deployments.health import READY, model_states
from deployments.routes.common import JSONBody, app_state

router = APIRouter()


@router.get("/health", responses={503: {"description": "a model deployment is loading or down"}})
async def health(request: Request) -> JSONBody:
    """Every model deployment's state (ready with its load, loading, or unavailable); 503 unless all are ready."""
    state = app_state(request)
    models = await model_states(state.router.routes)
    healthy = all(model["status"] == READY for model in models.values())
    headers = {} if healthy else {"Retry-After": str(state.retry_after_s)}
    return JSONBody(
        {"status": "ok" if healthy else "degraded", "models": models}, status_code=200 if healthy else 503, headers=headers
    )
