"""The rate limits' shared ledger as a Ray actor: one per application, used by every front replica.

The actor is named after the application (``rate-limits-<app>``, in Serve's namespace) and made
with ``get_if_exists``, so the first front replica to start creates it and the others find it.
It needs no CPU of its own (``num_cpus=0``) and runs its calls one at a time, which is all the
locking the :class:`~deployments.ratelimit.Ledger` needs. It belongs to the replica that created
it: stopping the application stops it, and if that replica goes first, the next call of another
replica fails, that replica falls back to its own limits (``deployments/ratelimit.py``) and its
retry creates a new actor, whose windows start from zero.
"""

from __future__ import annotations

import asyncio

import ray

from deployments.ratelimit import Ledger, Report, Sync

SERVE_NAMESPACE = "serve"  # ray.serve._private.constants.SERVE_NAMESPACE
CALL_TIMEOUT_S = 5.0  # a lease or report the actor has not answered by then: out of reach
START_TIMEOUT_S = 60.0  # the actor's first answer, its worker process started first


class LedgerActor:
    def __init__(self) -> None:
        self.ledger = Ledger()

    def ping(self) -> bool:
        return True

    def lease(self, key: str, rpm: int | None) -> Sync:
        return self.ledger.lease(key, rpm)

    def report(self, reports: list[Report]) -> dict[str, Sync]:
        return self.ledger.report(reports)


class RayAuthority:
    """The application's ledger actor, behind the :class:`~deployments.ratelimit.Authority`
    interface the replica's limiter uses."""

    def __init__(self, app_name: str, call_timeout_s: float = CALL_TIMEOUT_S, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.name = f"rate-limits-{app_name}"
        self.call_timeout_s = call_timeout_s
        self.start_timeout_s = start_timeout_s
        self._actor = None

    def _get_or_create(self):
        return (
            ray.remote(LedgerActor)
            .options(name=self.name, namespace=SERVE_NAMESPACE, get_if_exists=True, num_cpus=0, max_restarts=0)
            .remote()
        )

    async def connect(self) -> None:
        self._actor = None
        actor = await asyncio.to_thread(self._get_or_create)  # a GCS lookup: off the event loop
        await asyncio.wait_for(actor.ping.remote(), self.start_timeout_s)
        self._actor = actor

    async def lease(self, key: str, rpm: int | None) -> Sync:
        return await asyncio.wait_for(self._live().lease.remote(key, rpm), self.call_timeout_s)

    async def report(self, reports: list[Report]) -> dict[str, Sync]:
        return await asyncio.wait_for(self._live().report.remote(reports), self.call_timeout_s)

    def _live(self):
        if self._actor is None:
            raise RuntimeError(f"the rate-limit actor {self.name} is not connected")
        return self._actor
