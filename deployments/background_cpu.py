"""Ray's background processes on a front's node run under ``SCHED_IDLE``.

On a small machine vLLM's OpenMP threads hold every core and wait for each other at each
barrier; a thread taken off its core makes the other spin. Under ``SCHED_BATCH`` (how ``make
serve`` starts Ray, :mod:`deployments.serving_env`) Ray's processes no longer preempt those
threads when they wake, but Ray starts its own system processes at nice 0 and its workers, the
engine's processes among them, at nice 15: the GCS or the dashboard weighs 28 times an engine
thread, and takes a core at the engine's next slice end. Under ``SCHED_IDLE`` a process gets
the CPU when no other process wants it, which on a busy node is between the engine's steps,
when its threads sleep anyway (sched(7)). Measured with the default app, c=32 levels alternated
in one app: inter-token p99 median 336 against 584 ms, tokens a second +1% (BENCHMARKS.md, session 18).

Only processes that serve no request and start none that do are moved (``SCHED_IDLE`` is
inherited, and leaving it needs privileges):

* every process whose command line names this node's Ray session directory, the raylet aside
  (it starts the workers that become replicas), and their children: the GCS, the dashboard and
  its module processes, the log monitor, the autoscaler's monitor;
* the raylet's workers that run Ray's own agents or Serve's controller.

Not moved: the raylet, every Serve replica (a model's, the front's) and what it starts (vLLM's
engine processes), Serve's HAProxy manager (it starts HAProxy, which every request crosses),
Serve's fallback HTTP proxy (HAProxy's backup: requests wait in it while no front replica is
up), the batch driver (batches go through it), idle workers (they become replicas).

Linux only; elsewhere, or where a process belongs to another user, nothing changes. Each front
replica applies it once its co-located models are loaded (the controller has the whole CPU while
it deploys) and again every :data:`PERIOD_S` (a restarted controller is a new process). ``server.ray_background_cpu: unchanged`` turns it off.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from deployments import procfs

logger = logging.getLogger("ray.serve")

PERIOD_S = 30.0

# The raylet's workers that are Ray's own and on no request's path (their command line's start).
OFF_PATH_WORKERS = ("ray::ServeController", "ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _live(p: procfs.Process | None) -> procfs.Process | None:
    """``p`` unless it is gone or a zombie (a zombie has no command line left to judge it by)."""
    return p if p is not None and p.state != "Z" and p.cmdline else None


def _session_dir(raylet_cmdline: str) -> str | None:
    for arg in raylet_cmdline.split():
        if arg.startswith("--session_dir="):
            return arg.split("=", 1)[1]
    return None


def off_path_processes(raylet_pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The pids of this node's Ray processes that serve no request (see the module's doc)."""
    raylet = _live(procfs.read(raylet_pid, proc))
    session = _session_dir(raylet.cmdline) if raylet else None
    if session is None:
        return []
    table = {pid: p for pid in procfs.pids(proc) if (p := _live(procfs.read(pid, proc)))}
    children = procfs.children(table.values())

    # the raylet's own tree (its workers, and what they start) is on the path, but for the
    # agents and Serve's controller; a worker not yet named may name the session
    raylet_tree = procfs.subtree(children, [raylet_pid])
    agents = [pid for pid in children.get(raylet_pid, []) if table[pid].cmdline.startswith(OFF_PATH_WORKERS)]
    named = [
        pid
        for pid, p in table.items()
        if pid not in raylet_tree and (session + " " in p.cmdline + " " or session + "/" in p.cmdline)
    ]
    return sorted(procfs.subtree(children, agents + named))


def to_idle(pids: list[int], proc: Path = Path("/proc")) -> int:
    """Move every thread of ``pids`` to ``SCHED_IDLE``; how many threads were moved now."""
    moved = 0
    for pid in pids:
        try:
            threads = [int(t) for t in os.listdir(proc / str(pid) / "task")]
        except OSError:
            continue
        for tid in threads:
            try:
                if os.sched_getscheduler(tid) != os.SCHED_IDLE:
                    os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                    moved += 1
            except (ProcessLookupError, PermissionError):  # gone, or another user's (a shared node)
                continue
    return moved


def supported() -> bool:
    return hasattr(os, "SCHED_IDLE") and Path("/proc/self/task").is_dir()


async def keep_idle(raylet_pid: int, period_s: float = PERIOD_S) -> None:
    """Apply :func:`to_idle` to :func:`off_path_processes` now and every ``period_s``."""
    first = True
    while True:
        pids = await asyncio.to_thread(off_path_processes, raylet_pid)
        moved = await asyncio.to_thread(to_idle, pids)
        if first:
            logger.info("Ray's background processes on this node run under SCHED_IDLE: %d processes (%d threads moved now)", len(pids), moved)
            first = False
        await asyncio.sleep(period_s)
