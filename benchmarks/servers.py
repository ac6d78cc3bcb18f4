"""Helpers to run the benchmarked things in processes of their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from deployments import procfs

REPO = Path(__file__).resolve().parents[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    """Poll ``url`` until it answers 200; raise if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready within {timeout} s")


def stop_app(app, log_file: Path) -> str | None:
    """Stop a graph app (``tests.conftest.ServeApp``), keeping the tail of its log in ``log_file``;
    what went wrong in stopping it (engine processes that outlived it), or None. The figures
    measured before stay valid either way."""
    log_file.write_text(app.log_path.read_text(errors="replace")[-200_000:])
    try:
        app.stop()
    except AssertionError as exc:
        return str(exc)
    return None


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM a server started with ``start_new_session=True`` and its children; SIGKILL if slow."""
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)


def process_tree(root: int) -> list[int]:
    """``root``, then every process below it, from the parent links in /proc."""
    kids = procfs.children(p for pid in procfs.pids() if (p := procfs.read(pid)) is not None)
    return [root, *sorted(procfs.subtree(kids, [root]) - {root})]


def _signal_tree(root: int, sig: int) -> list[int]:
    pids = process_tree(root)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def _wait_until(pids: list[int], stopped: bool, timeout: float = 10.0) -> None:
    """Signals arrive asynchronously: wait until every process of ``pids`` still there is
    stopped (state T), or none is."""
    deadline = time.monotonic() + timeout
    while True:
        states = [p.state for pid in pids if (p := procfs.read(pid)) is not None and p.state != "Z"]
        if all((state == "T") == stopped for state in states):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes did not {'stop' if stopped else 'continue'} within {timeout} s: {states}")
        time.sleep(0.005)


def freeze(root: int) -> None:
    """Stop (SIGSTOP) ``root`` and every process below it, and return once they all are: a
    frozen server spends no CPU and keeps its state, its sockets and its memory until
    :func:`thaw`. The tree is walked twice: a process started between the first walk and its
    parent's stop is caught by the second."""
    _signal_tree(root, signal.SIGSTOP)
    _wait_until(_signal_tree(root, signal.SIGSTOP), stopped=True)


def thaw(root: int) -> None:
    """Continue (SIGCONT) ``root`` and every process below it, and return once they all run."""
    _wait_until(_signal_tree(root, signal.SIGCONT), stopped=False)


def result_line(args: list[str], name: str, timeout: float, log: Path | None = None) -> dict:
    """Run ``python ARGS`` in a fresh process; its last ``RESULT {json}`` line, parsed. Its
    progress lines (indented) are echoed; all it printed goes to ``log`` if given."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    if log is not None:
        log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    for line in proc.stdout.splitlines():
        if line.startswith("  "):
            print(line, flush=True)
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not found:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(found[-1][len("RESULT "):])
