"""Engine processes forked from a warm process instead of started cold.

vLLM starts its engine core in a new process, and the core starts its worker in another; on CPU
each spends 7-13 s importing torch and vLLM again before it does anything (the first chat answer
waits for both). A ``multiprocessing`` fork server is a process that imports those modules once
and then forks each new process off itself, already imported. It is started as soon as a model
server knows it will start a vLLM engine, so its imports run beside the model server's own
preparation, and the engine core starts the worker from the same server.

Three things differ from a spawned process, and are put right here:

* A forked child has the fork server's environment, from when the server started; the model
  server (and vLLM, while it builds its config) set variables after that, which the engine and
  its worker read. Each process carries the environment of the moment it is started and sets it
  first thing.
* A process's allocator and OpenMP runtime load once, from the environment of its start:
  ``LD_PRELOAD`` (vLLM sets tcmalloc and torch's libgomp there while it builds its config) and
  the OpenMP variables (thread count and CPU binding: vLLM starts its worker with
  ``OMP_NUM_THREADS`` and ``GOMP_CPU_AFFINITY`` or ``OMP_PLACES``). A forked child keeps the
  server's, and vLLM's worker runs 0.67x as fast unbound (BENCHMARKS.md, session 8). So the
  server is started with the environment the worker will ask for (the caller's guess), and a process is forked only
  where the runtime it would inherit is the one it asks for (``forks_as_started``): the same
  variables, or the same preloads and no OpenMP variable that places threads (the engine core:
  it schedules, and gets its starter's CPU mask back). Any other process is spawned, as
  ``multiprocessing`` would have started it, and the log says why.
* A spawned child's parent is its starter, whose death Ray cleans up after; a forked child's
  parent is the fork server, which exits when the model server dies. The child asks the kernel
  to kill it when its parent goes (``PR_SET_PDEATHSIG``), so no engine outlives a killed replica.

A process forked from the server can start processes from it too (``context_here``): the
engine core starts its worker that way. This module imports no vLLM: the fork server imports
what it is told to preload.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.popen_forkserver
import multiprocessing.popen_spawn_posix
import os
import signal
import sys
from typing import Callable

logger = logging.getLogger("ray.serve")

_PR_SET_PDEATHSIG = 1
# What a process's allocator and OpenMP runtime (GNU, Intel, LLVM) are loaded with, read once
# when they load, that decide how fast its threads run: the preloads, and the thread count,
# binding and waiting that vLLM sets for its workers or a user may set (others, such as
# KMP_DUPLICATE_LIB_OK that scikit-learn sets on import, are not compared); and those of them
# that place threads on CPUs
RUNTIME_VARIABLES = (
    "LD_PRELOAD", "OMP_NUM_THREADS", "OMP_PLACES", "OMP_PROC_BIND", "OMP_WAIT_POLICY", "GOMP_CPU_AFFINITY",
    "GOMP_SPINCOUNT", "KMP_AFFINITY", "KMP_BLOCKTIME", "KMP_TPAUSE",
)
PLACEMENT = ("OMP_PLACES", "OMP_PROC_BIND", "GOMP_CPU_AFFINITY", "KMP_AFFINITY")

_started: "ForkServerContext | None" = None
# The runtime variables the fork server loaded with: known where the server was started and in
# every process forked from it
_runtime: dict[str, str] | None = None
# Run first thing in every process started from the server (set by start)
_child_setup: "Callable[[], None] | None" = None


def runtime_variables(env: dict[str, str]) -> dict[str, str]:
    return {key: env[key] for key in RUNTIME_VARIABLES if key in env}


def forks_as_started(env: dict[str, str], runtime: dict[str, str] | None) -> bool:
    """Whether a process started with ``env`` gets, forked from a server loaded with ``runtime``,
    the runtime it would load spawned: the same variables, or the same preloads and no OpenMP
    variable that places threads."""
    if runtime is None:
        return False
    wanted = runtime_variables(env)
    if wanted == runtime:
        return True
    return wanted.get("LD_PRELOAD") == runtime.get("LD_PRELOAD") and not any(key in wanted for key in PLACEMENT)


class CarriedEnvProcess(multiprocessing.context.ForkServerProcess):
    """A fork-server process that runs with its starter's environment and dies with its parent;
    spawned instead where forking would give it another runtime (``forks_as_started``)."""

    def start(self) -> None:
        self._carried_env = dict(os.environ)  # pickled with the process object
        self._carried_affinity = os.sched_getaffinity(0)
        self._setup, self._runtime = _child_setup, _runtime
        self._forked = forks_as_started(self._carried_env, _runtime)
        super().start()

    @staticmethod
    def _Popen(process_obj):
        if process_obj._forked:
            return multiprocessing.popen_forkserver.Popen(process_obj)
        wanted, runtime = runtime_variables(process_obj._carried_env), process_obj._runtime or {}
        differ = sorted(key for key in {*wanted, *runtime} if wanted.get(key) != runtime.get(key))
        logger.info("%s is spawned, not forked: %s", process_obj.name, "; ".join(f"{key}={wanted.get(key)!r}, the server's {runtime.get(key)!r}" for key in differ))
        return multiprocessing.popen_spawn_posix.Popen(process_obj)

    def run(self) -> None:
        global _runtime, _child_setup
        _die_with_parent()
        if self._forked:
            _runtime, _child_setup = self._runtime, self._setup
            _stay_on_the_server()
            if not any(key in self._carried_env for key in PLACEMENT):
                os.sched_setaffinity(0, self._carried_affinity)  # the server's OpenMP runtime pinned it
        os.environ.clear()
        os.environ.update(self._carried_env)
        if self._setup is not None:
            self._setup()
        super().run()


class ForkServerContext(multiprocessing.context.ForkServerContext):
    Process = CarriedEnvProcess


def start(preload: list[str], child_setup: "Callable[[], None] | None" = None) -> ForkServerContext:
    """A context whose processes fork from this process's fork server, started now (once) with
    ``preload`` imported in it and this process's environment of this moment: what its
    processes' allocator and OpenMP runtime load with. ``child_setup`` (a module-level function)
    runs first thing in every process started from the context. The imports run in the
    background; the first process started from the context waits for them."""
    global _started, _runtime, _child_setup
    if _started is None:
        multiprocessing.forkserver.set_forkserver_preload(preload)
        _runtime = runtime_variables(dict(os.environ))
        multiprocessing.forkserver.ensure_running()
        _started, _child_setup = ForkServerContext(), child_setup
        logger.info("Engine processes fork from a fork server (preloading %s; %s)", ", ".join(preload), _runtime or "no runtime variables")
    return _started


def runtime() -> dict[str, str]:
    """The runtime variables the fork server loaded with (empty where there is none)."""
    return dict(_runtime or {})


def context_here() -> "ForkServerContext | None":
    """In a process forked from the fork server, a context whose processes fork from the same
    server (the engine core starts its worker from it); elsewhere None."""
    return _started


def _stay_on_the_server() -> None:
    """Make this forked process a client of the server that forked it, without keeping the
    server alive.

    The server runs while any process holds its "alive" pipe, and hands one to each child.
    Closing it here leaves the model server the only holder, so the fork server, and with it
    (``_die_with_parent``) every process forked from it, goes when the model server goes. A
    request for a new process must still send the server some "alive" descriptor, which it
    passes on to the new child (which closes it here): one on /dev/null does. The server's
    address came with the fork."""
    global _started
    server = multiprocessing.forkserver._forkserver
    fd, server._forkserver_alive_fd = server._forkserver_alive_fd, os.open(os.devnull, os.O_RDONLY)
    if fd is not None:
        os.close(fd)
    server.ensure_running = _server_is_running  # the server is this process's parent: never start one
    _started = ForkServerContext()


def _server_is_running() -> None:
    pass


def _die_with_parent() -> None:
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
