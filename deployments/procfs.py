"""One process as Linux's ``/proc`` shows it: its state, parent, CPU time and command line.

The front reads it to find Ray's background processes (:mod:`deployments.background_cpu`), the
benchmarks to count the CPU each hop spends (``benchmarks/procstat.py``). Fields of
``/proc/<pid>/stat`` as proc(5) numbers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    pid: int
    state: str  # field 3: R, S, D, Z, ...
    ppid: int  # field 4
    cpu_ticks: int  # fields 14 and 15, utime + stime, in clock ticks
    cmdline: str  # arguments joined by spaces; empty for kernel threads and zombies


def read(pid: int | str, proc: Path = PROC) -> Process | None:
    """``pid``'s entry; None when it is gone (or was never there)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    # field 2, the command name, may hold spaces and parentheses: the fields after it start
    # after its last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return Process(
        pid=int(pid),
        state=fields[0],
        ppid=int(fields[1]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        cmdline=raw.replace(b"\0", b" ").decode(errors="replace").strip(),
    )


def pids(proc: Path = PROC) -> list[int]:
    """Every process id ``proc`` lists now."""
    return [int(entry.name) for entry in proc.iterdir() if entry.name.isdigit()]


def children(processes: Iterable[Process]) -> dict[int, list[int]]:
    """Parent pid -> the pids of its children, among ``processes``."""
    out: dict[int, list[int]] = {}
    for p in processes:
        out.setdefault(p.ppid, []).append(p.pid)
    return out


def subtree(kids: dict[int, list[int]], roots: Iterable[int]) -> set[int]:
    """``roots`` and every process below them, by the parent links of :func:`children`."""
    seen = set(roots)
    stack = list(seen)
    while stack:
        for child in kids.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen
