"""Each model's state as ``/health`` and ``/metrics`` report it.

A model is ``ready`` (with its engine's load: ``running``, ``waiting``, ``kv_cache_usage``... for
an LLM, ``queued`` for an embedding model), ``loading`` (its deployment has no running replica
yet and one is starting: weights being prepared or loaded) or ``unavailable`` (no replica is
running or starting, or the running one failed to answer). A running replica too loaded to
answer the stats call in time is ``ready`` and ``busy``.
"""

from __future__ import annotations

import asyncio
from typing import Any

READY, LOADING, UNAVAILABLE = "ready", "loading", "unavailable"
STATES = (READY, LOADING, UNAVAILABLE)


async def model_states(routes: list, timeout_s: float | None = None) -> dict[str, dict[str, Any]]:
    """Model id -> its state; the ready ones are asked for their stats, all at once."""

    async def one(route) -> dict[str, Any]:
        if not route.ready:
            return {"status": LOADING if route.loading else UNAVAILABLE}
        try:
            return {"status": READY, **await asyncio.wait_for(route.handle.stats.remote(), timeout_s)}
        except Exception as exc:  # noqa: BLE001 - reported, not raised: the others still count
            if isinstance(exc, asyncio.TimeoutError) or "BackPressure" in type(exc).__name__:
                # the stats call waited behind a full replica: Serve runs (and health-checks) it,
                # so the model is busy, not down -- a probe must not restart a loaded server
                return {"status": READY, "busy": True}
            return {"status": UNAVAILABLE, "error": type(exc).__name__}

    states = await asyncio.gather(*(one(route) for route in routes))
    return {route.id: state for route, state in zip(routes, states)}
