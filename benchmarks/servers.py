"""Helpers to run the benchmarked things in processes of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

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
