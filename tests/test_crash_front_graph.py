"""Crash recovery of the front on the fast path (issue 13): the default ``serve_config.yaml``
co-locates both models in the front's replica, so a SIGKILL of that replica takes the chat
model's vLLM engine (EngineCore and worker, its children) and the embedding model with it.
Runs last on the session's main app (``kills_front``): each kill is followed by a recovery."""

from __future__ import annotations

import pytest

from tests.crash import check_recovery, kill_and_recover

pytestmark = [pytest.mark.graph, pytest.mark.kills_front]


async def test_killed_front_recovers_three_times_without_leaks(graph, record_property):
    """Three SIGKILLs of the front replica under streaming load. After each: the model answers
    again within 60 s and keeps answering, no process of the dead replica survives (vLLM's
    EngineCore and worker exit with it), and available memory is back within 1 GiB.

    A request sent while no front replica runs waits in HAProxy's fallback (Ray Serve's own
    proxy) for the new replica, which answers 503 with Retry-After while its models load.
    Requests in flight on the killed replica cannot get an answer from it: a stream that had
    started is cut (the client sees the connection close before ``[DONE]``, an error, never a
    clean end), and a request still waiting for its answer gets HAProxy's 500 page."""
    model = "smollm2-135m-instruct"
    for kill in range(3):
        recovery = await kill_and_recover(graph.base_url, "openai", "Ingress", model, ("stream", "stream", "stream", "chat"))
        print(f"front kill {kill + 1}: {recovery.summary()}")
        record_property(f"kill{kill + 1}", recovery.summary())
        assert len(recovery.descendant_pids) >= 2, "the front should have had vLLM's engine processes"
        check_recovery(
            recovery,
            {(503, "service_unavailable_error")},
            in_flight_statuses=frozenset(
                {(200, "error-event"), (0, "RemoteProtocolError"), (0, "ReadError"), (500, "not-an-openai-error-body")}
            ),
        )
