"""Stop HAProxy processes that an earlier ``serve run`` left behind.

In HAProxy mode Ray Serve's ``HAProxyManager`` actor runs ``haproxy`` as a child process (its
config under ``/tmp/haproxy-serve/``). When that actor dies without stopping it (seen after a
``serve run`` stopped under load), the process is orphaned: it is re-parented to PID 1 and keeps
its fixed ports (the stats and metrics frontends), and every later ``serve run`` on the machine
fails with "HAProxy crashed during startup ... Address already in use". ``make serve`` runs this
module first. A running app's HAProxy is a child of its live manager, never of PID 1, so it is
left alone.

Linux only (it reads ``/proc``); elsewhere it finds nothing.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

MARKER = "/haproxy-serve/"


def _parent_and_args(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:  # gone meanwhile, or not ours to read
        return None
    # the command name (2nd field) is in parentheses and may hold spaces: fields follow the last ")"
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] == "Z":  # exited, waiting to be reaped: holds no port
        return None
    return int(fields[1]), args


def orphans() -> list[tuple[int, str]]:
    """(pid, command line) of each live Serve HAProxy process whose manager is gone."""
    found = []
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else []:
        info = _parent_and_args(int(entry.name))
        if info and info[0] == 1 and "haproxy" in info[1] and MARKER in info[1]:
            found.append((int(entry.name), info[1]))
    return found


def stop(timeout_s: float = 10.0) -> list[tuple[int, str]]:
    """SIGTERM each orphan, SIGKILL what is still there after ``timeout_s``; the ones stopped."""
    found = orphans()

    def left() -> set[int]:
        return {pid for pid, _ in found} & {pid for pid, _ in orphans()}

    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = left()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while left() and time.monotonic() < deadline:
            time.sleep(0.1)
    return found


def main() -> None:
    for pid, args in stop():
        print(f"Stopped HAProxy {pid}, left by an earlier serve run: {args}", flush=True)


if __name__ == "__main__":
    main()
