"""CPU time per hop: which process on the request path spent how much CPU during a run.

A snapshot reads ``utime + stime`` from ``/proc/<pid>/stat`` of every process whose command line
(Ray and vLLM set process titles) names a hop; the difference of two snapshots, summed per hop,
is what each hop spent. Ray's titles: ``ray::ProxyActor``, ``ray::ServeController``,
``ray::ServeReplica:<app>:<deployment>`` (with ``.<method>`` appended while a task runs); vLLM's
engine processes are ``VLLM::EngineCore`` and its workers, or on CPU the fork server they fork from
and its children (``deployments/engines/forkserver.py``), which keep the server's command line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from deployments import procfs

TICK = os.sysconf("SC_CLK_TCK")
CLIENT = "client (load generator)"
RAY_SYSTEM = "Ray system (GCS, raylet, dashboard, workers)"

_REPLICA = re.compile(r"ServeReplica:[^:\s]+:([A-Za-z0-9_\-]+)")


def hop_of(cmdline: str) -> str | None:
    """The hop a process belongs to, from its command line; None for processes off the path."""
    m = _REPLICA.search(cmdline)
    if m:
        name = m.group(1)
        return "ingress" if name == "Ingress" else f"replica {name}"
    if cmdline.startswith("haproxy") or "/haproxy " in cmdline:
        return "HAProxy"
    if "ray::ProxyActor" in cmdline:
        return "HTTP proxy"
    if "ray::ServeController" in cmdline:
        return "Serve controller"
    if cmdline.startswith("VLLM::") or "VLLM::" in cmdline.split(" ", 1)[0]:
        return "vLLM engine processes"
    if "multiprocessing.forkserver import main" in cmdline and "'vllm." in cmdline:
        return "vLLM engine processes"  # the engine's fork server, and the core and worker forked from it
    if "vllm.entrypoints.openai.api_server" in cmdline:
        return "vLLM API server"
    if "infinity_emb" in cmdline:
        return "Infinity server"
    if cmdline.startswith("ray::") or re.search(r"(gcs_server|raylet|dashboard|log_monitor|ray/_private|runtime_env)", cmdline):
        return RAY_SYSTEM
    return None


def snapshot(client_pid: int | None = None) -> dict[int, tuple[str, int]]:
    """pid -> (hop, CPU ticks so far) for every process on a hop; ``client_pid`` is the client."""
    client_pid = os.getpid() if client_pid is None else client_pid
    out: dict[int, tuple[str, int]] = {}
    for pid in procfs.pids():
        p = procfs.read(pid)
        if p is None:  # gone in between
            continue
        hop = CLIENT if pid == client_pid else hop_of(p.cmdline)
        if hop is not None:
            out[pid] = (hop, p.cpu_ticks)
    return out


def per_hop_seconds(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> dict[str, float]:
    """CPU seconds each hop spent between two snapshots (a process started in between counts
    whole; one that ended in between is lost, which the report's totals make visible)."""
    spent: dict[str, float] = {}
    for pid, (hop, ticks) in after.items():
        prior = before.get(pid)
        delta = ticks - prior[1] if prior is not None and prior[0] == hop else ticks
        spent[hop] = spent.get(hop, 0.0) + max(0, delta) / TICK
    return {hop: round(s, 2) for hop, s in sorted(spent.items())}


@dataclass
class CPUMeter:
    """``with CPUMeter() as m: ...`` then ``m.seconds``: CPU per hop over the block."""

    seconds: dict[str, float] | None = None

    def __enter__(self):
        self._before = snapshot()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = per_hop_seconds(self._before, snapshot())


def per_request_ms(seconds: dict[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per request for each hop, plus their ``total``."""
    if requests <= 0:
        return {}
    out = {hop: round(s * 1000 / requests, 2) for hop, s in seconds.items()}
    out["total"] = round(sum(seconds.values()) * 1000 / requests, 2)
    return out
