"""The fork server engine processes start from (``deployments/engines/forkserver.py``): a child
runs with the environment of the moment it was started, not the server's; a child whose
allocator or OpenMP variables would differ from the runtime the server loaded is spawned
instead; a forked child starts its own children from the same server; and no child outlives the
process that started the server, even one killed with SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from deployments.engines.forkserver import forks_as_started
from tests.conftest import REPO

# The starter: a fork server (nothing preloaded) started with an OpenMP binding in its
# environment, a variable set after it started; a child that reports what it sees, starts a
# grandchild from the same server with the server's binding and sleeps; then the starter kills
# itself, as a replica is killed, or stops the child. Then a child asking another binding.
STARTER = textwrap.dedent(
    """
    import os, signal, sys, time
    from deployments.engines import forkserver

    def grandchild(queue):
        queue.put(("grandchild", os.getpid(), os.getppid(), os.environ.get("OMP_PLACES")))
        time.sleep(120)

    def child(queue):
        queue.put(("child", os.environ.get("SET_AFTER_THE_SERVER"), os.getpid(), os.getppid(), os.environ.get("OMP_PLACES")))
        os.environ["OMP_PLACES"] = "{0}"  # the binding the server loaded with
        forkserver.context_here().Process(target=grandchild, args=(queue,), daemon=False).start()
        time.sleep(120)

    if __name__ == "__main__":
        os.environ["OMP_PLACES"] = "{0}"
        context = forkserver.start([])
        del os.environ["OMP_PLACES"]
        os.environ["SET_AFTER_THE_SERVER"] = "seen"
        queue = context.Queue()
        process = context.Process(target=child, args=(queue,), daemon=False)
        process.start()
        for _ in range(2):
            print(*queue.get(timeout=60), flush=True)
        print("starter", os.getpid(), flush=True)
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        process.terminate()
        process.join(10)
        print("exit", process.exitcode, flush=True)
        os.environ["OMP_PLACES"] = "{1}"
        other = context.Process(target=grandchild, args=(queue,), daemon=False)
        other.start()
        print(*queue.get(timeout=60), flush=True)
        other.terminate()
        other.join(10)
    """
)


def _run(tmp_path, mode: str) -> tuple[dict[str, list[str]], subprocess.CompletedProcess]:
    script = tmp_path / "starter.py"  # a file: the child's function is found in it by name
    script.write_text(STARTER)
    out = subprocess.run(
        [sys.executable, str(script), mode], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        name, *words = line.split()
        lines.setdefault(name, []).append(words)
    return lines, out


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_children_run_with_the_environment_of_their_start_forked_only_onto_their_runtime(tmp_path):
    lines, out = _run(tmp_path, "terminate")
    assert set(lines) == {"child", "grandchild", "starter", "exit"}, out.stderr
    [(seen, child, server, child_places)] = lines["child"]
    [starter] = lines["starter"][0]
    assert (seen, child_places) == ("seen", "None")  # the starter's environment, not the server's
    assert server != starter  # forked by the server, not by the starter: no binding asked
    first, second = lines["grandchild"]
    assert first[1:] == [server, "{0}"]  # the child's child, forked by the same server
    assert lines["exit"] == [[str(-15)]]
    assert second[1:] == [starter, "{1}"]  # another binding than the server's: spawned by the starter
    assert _gone_within(int(child), 5)
    assert _gone_within(int(first[0]), 10), "a grandchild from the fork server outlived the starter"


def test_no_child_outlives_a_killed_starter(tmp_path):
    lines, out = _run(tmp_path, "kill")
    assert out.returncode == -9 and lines["child"][0][0] == "seen", out.stderr
    _, child, server, _ = lines["child"][0]
    grandchild = lines["grandchild"][0][0]
    assert _gone_within(int(server), 10), "the fork server outlived the process that started it"
    assert _gone_within(int(child), 10), "a child of the fork server outlived the process that started it"
    assert _gone_within(int(grandchild), 10), "a grandchild from the fork server outlived the process that started it"


def test_a_process_forks_only_onto_the_runtime_it_would_load():
    runtime = {"LD_PRELOAD": "libgomp.so.1", "OMP_NUM_THREADS": "2", "GOMP_CPU_AFFINITY": "0 1"}
    base = {"PATH": "/bin", "LD_PRELOAD": "libgomp.so.1"}
    assert forks_as_started({**base, "OMP_NUM_THREADS": "2", "GOMP_CPU_AFFINITY": "0 1"}, runtime)  # the worker
    assert forks_as_started({**base, "OMP_NUM_THREADS": "1"}, runtime)  # places no thread: the core
    assert not forks_as_started({**base, "OMP_NUM_THREADS": "2", "GOMP_CPU_AFFINITY": "1"}, runtime)
    assert not forks_as_started({"PATH": "/bin", "OMP_NUM_THREADS": "2", "GOMP_CPU_AFFINITY": "0 1"}, runtime)  # no preload
    assert not forks_as_started({**base, "LD_PRELOAD": "libtcmalloc.so:libgomp.so.1"}, runtime)
    assert not forks_as_started(base, None)  # no server


def test_the_guessed_worker_runtime_is_the_one_vllm_starts_the_default_models_worker_with():
    """The fork server starts before the engine's config exists, with a guess at what vLLM will
    start the worker with (``worker_runtime_env``). A vLLM whose CPU platform or executor sets
    something else would get every worker spawned, and this says so."""
    pytest.importorskip("vllm")
    from vllm import AsyncEngineArgs
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    from deployments.engines import forkserver, vllm_engine
    from deployments.engines.vllm_engine import VLLMEngine, worker_runtime_env, on_cpu

    if not on_cpu():
        pytest.skip("the fork server is for vLLM on CPU")
    engine = VLLMEngine(_default_llm_options())
    args = engine._engine_args()
    before = dict(os.environ)
    try:
        for key, value in vllm_engine.CPU_ENV_DEFAULTS.items():
            os.environ[key] = value
        with worker_runtime_env(args):
            guessed = forkserver.runtime_variables(dict(os.environ))
        config = AsyncEngineArgs(**args).create_engine_config()  # sets LD_PRELOAD, as in the model server
        with OMPProcessManager(config).configure_omp_envs(rank=0, local_rank=0):  # as vLLM's executor does
            asked = forkserver.runtime_variables(dict(os.environ))
    finally:
        os.environ.clear()
        os.environ.update(before)
    assert "GOMP_CPU_AFFINITY" in asked or "OMP_PLACES" in asked or "KMP_AFFINITY" in asked  # vLLM binds its worker
    assert guessed == asked
    assert forks_as_started(asked, guessed)


def _default_llm_options():
    import yaml

    from deployments import model_store
    from deployments.config import LLMConfig
    from deployments.engines import _options

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    llm = LLMConfig(**config["applications"][0]["args"]["llms"][0])
    return _options(llm, model_store.resolve(llm.source, llm.dtype), "test")


# A model server's first steps with a kept guess: the fork server starts before vLLM is imported,
# with the guessed runtime in its environment, and the engine's own start finds it running.
EARLY = textwrap.dedent(
    """
    import json, multiprocessing.forkserver, sys
    from deployments.engines import forkserver, vllm_engine

    vllm_engine.FORK_SERVER_PRELOAD = []  # what it imports is not the point here: no 10 s import left running
    started = vllm_engine.start_fork_server_early({}, {})
    pid = multiprocessing.forkserver._forkserver._forkserver_pid if started else None
    environ = {}
    if pid:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = dict(item.decode().split("=", 1) for item in f.read().split(b"\\0") if b"=" in item)
    print(json.dumps({
        "started": started, "vllm_imported": "vllm" in sys.modules, "runtime": forkserver.runtime(),
        "server_env": forkserver.runtime_variables(environ), "ours": forkserver.runtime_variables(dict(__import__("os").environ)),
    }))
    """
)


def _early(tmp_path, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", EARLY], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path), **env},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_a_kept_guess_starts_the_fork_server_before_vllm_is_imported(tmp_path, monkeypatch):
    from deployments.engines import vllm_engine

    keep = {"VLLM_CPU_OMP_THREADS_BIND": "auto", "OMP_NUM_THREADS": "1"}
    assert _early(tmp_path, keep)["started"] is False  # nothing kept yet: the engine's start computes the guess
    guess = {"LD_PRELOAD": "/nonexistent/libgomp.so.1", "OMP_NUM_THREADS": "2", "GOMP_CPU_AFFINITY": "0 1"}
    # kept as the engine's start keeps it: the key from its environment, with the CPU defaults set
    monkeypatch.setattr(vllm_engine, "RUNTIME_GUESSES", tmp_path / "ray-openai-serve" / "vllm-worker-runtime.json")
    for key, value in {**keep, **vllm_engine.CPU_ENV_DEFAULTS}.items():
        monkeypatch.setenv(key, value)
    vllm_engine._keep_guess(vllm_engine._guess_key({}), guess)
    seen = _early(tmp_path, keep)
    assert seen["started"] is True and seen["vllm_imported"] is False
    assert seen["runtime"] == guess and seen["server_env"] == guess  # the server loaded with the guess
    assert seen["ours"] == {"OMP_NUM_THREADS": "1"}  # the model server's own environment is put back
    assert _early(tmp_path, {**keep, "VLLM_CPU_OMP_THREADS_BIND": "0"})["started"] is False  # another binding asked: not this guess


def test_kept_guesses_are_keyed_by_what_the_guess_depends_on(tmp_path, monkeypatch):
    from deployments.engines import vllm_engine

    monkeypatch.setattr(vllm_engine, "RUNTIME_GUESSES", tmp_path / "guesses.json")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")
    key = vllm_engine._guess_key({})
    assert key is not None and key == vllm_engine._guess_key({"model": "another"})  # the model is not an input
    assert key != vllm_engine._guess_key({"tensor_parallel_size": 2})
    vllm_engine._keep_guess(key, {"OMP_NUM_THREADS": "2"})
    assert vllm_engine._kept_guesses() == {key: {"OMP_NUM_THREADS": "2"}}
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    assert vllm_engine._guess_key({}) not in vllm_engine._kept_guesses()
    (tmp_path / "guesses.json").write_text("{not json")
    assert vllm_engine._kept_guesses() == {}  # a damaged file is no guess, not an error
