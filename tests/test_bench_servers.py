"""The benchmark's freezer on real processes: a frozen tree spends no CPU until it is thawed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from benchmarks.servers import freeze, process_tree, thaw
from deployments import procfs

# a parent that starts a child spinning on the CPU, as a server's front starts its engine
SPINNER = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'while True: pass']).wait()"


def _ticks(pid: int) -> int:
    return procfs.read(pid).cpu_ticks


def test_freeze_stops_the_whole_tree_and_thaw_continues_it():
    parent = subprocess.Popen([sys.executable, "-c", SPINNER], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(process_tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = process_tree(parent.pid)
        assert len(tree) == 2 and tree[0] == parent.pid
        child = tree[1]
        time.sleep(0.3)
        freeze(parent.pid)
        assert {procfs.read(pid).state for pid in tree} == {"T"}
        before = _ticks(child)
        time.sleep(0.5)
        assert _ticks(child) == before  # no CPU while frozen
        thaw(parent.pid)
        time.sleep(0.5)
        assert procfs.read(child).state == "R" and _ticks(child) > before
    finally:
        thaw(parent.pid)
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
