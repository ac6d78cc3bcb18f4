"""Engine processes forked from a warm process instead of started cold.

vLLM starts its engine core in a new process, and on CPU that process spends 7-13 s importing
torch and vLLM again before it does anything (the first chat answer waits for it). A
``multiprocessing`` fork server is a process that imports those modules once and then forks
each new process off itself, already imported. It is started as soon as a model server knows it
will start a vLLM engine, so its imports run beside the model server's own preparation.

Two things differ from a spawned process, and are put right here:

* A forked child has the fork server's environment, from when the server started; the model
  server (and vLLM, while it builds its config) set variables after that, which the engine and
  its worker read. Each process carries the environment of the moment it is started and sets it
  first thing.
* A spawned child's parent is the model server, whose death Ray cleans up after; a forked
  child's parent is the fork server, which exits when the model server dies. The child asks the
  kernel to kill it when its parent goes (``PR_SET_PDEATHSIG``), so no engine outlives a killed
  replica.

Only vLLM's engine core (the scheduler: no heavy computation) starts this way; the core still
spawns its worker, whose OpenMP runtime must load with the thread binding the core gives it
in the environment (a forked worker measured 0.7-0.85x the throughput; BENCHMARKS.md, session 6).
This module imports no vLLM: the fork server imports what it is told to preload.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import signal
import sys

logger = logging.getLogger("ray.serve")

_PR_SET_PDEATHSIG = 1
_started: "ForkServerContext | None" = None


class CarriedEnvProcess(multiprocessing.context.ForkServerProcess):
    """A fork-server process that runs with its starter's environment and dies with its parent."""

    def start(self) -> None:
        self._carried_env = dict(os.environ)  # pickled with the process object
        super().start()

    def run(self) -> None:
        _die_with_parent()
        _let_the_server_go()
        os.environ.clear()
        os.environ.update(self._carried_env)
        super().run()


class ForkServerContext(multiprocessing.context.ForkServerContext):
    Process = CarriedEnvProcess


def start(preload: list[str]) -> ForkServerContext:
    """A context whose processes fork from this process's fork server, started now (once) with
    ``preload`` imported in it. Its imports run in the background; the first process started
    from it waits for them."""
    global _started
    if _started is None:
        multiprocessing.forkserver.set_forkserver_preload(preload)
        multiprocessing.forkserver.ensure_running()
        _started = ForkServerContext()
        logger.info("Engine processes fork from a fork server (preloading %s)", ", ".join(preload))
    return _started


def _let_the_server_go() -> None:
    """The fork server runs while any process holds its "alive" pipe, and hands one to each
    child. Closing it here leaves the model server the only holder, so the fork server, and with
    it (``_die_with_parent``) every process forked from it, goes when the model server goes."""
    server = multiprocessing.forkserver._forkserver
    fd, server._forkserver_alive_fd = server._forkserver_alive_fd, None
    if fd is not None:
        os.close(fd)


def _die_with_parent() -> None:
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
