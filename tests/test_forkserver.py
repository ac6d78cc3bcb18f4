"""The fork server engine processes start from (``deployments/engines/forkserver.py``): a child
runs with the environment of the moment it was started, not the server's, and no child outlives
the process that started the server, even one killed with SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil

from tests.conftest import REPO

# The starter: a fork server (nothing preloaded), a variable set after it started, one child
# that reports what it sees and sleeps; then the starter kills itself, as a replica is killed.
STARTER = textwrap.dedent(
    """
    import os, signal, sys, time
    from deployments.engines import forkserver

    def child(queue):
        queue.put((os.environ.get("SET_AFTER_THE_SERVER"), os.getpid(), os.getppid()))
        time.sleep(120)

    if __name__ == "__main__":
        context = forkserver.start([])
        os.environ["SET_AFTER_THE_SERVER"] = "seen"
        queue = context.Queue()
        process = context.Process(target=child, args=(queue,), daemon=False)
        process.start()
        seen, pid, parent = queue.get(timeout=60)
        print(seen, pid, parent, os.getpid(), flush=True)
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        process.terminate()
        process.join(10)
        print("exit", process.exitcode, flush=True)
    """
)


def _run(tmp_path, mode: str) -> tuple[list[str], subprocess.CompletedProcess]:
    script = tmp_path / "starter.py"  # a file: the child's function is found in it by name
    script.write_text(STARTER)
    out = subprocess.run(
        [sys.executable, str(script), mode], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return out.stdout.split(), out


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_a_child_runs_with_the_environment_of_its_start_and_is_the_servers(tmp_path):
    words, out = _run(tmp_path, "terminate")
    assert words[:1] == ["seen"], out.stderr
    _, pid, parent, starter = words[:4]
    assert parent != starter  # forked by the server, not by the starter
    assert words[4:] == ["exit", str(-15)]
    assert _gone_within(int(pid), 5)


def test_no_child_outlives_a_killed_starter(tmp_path):
    words, out = _run(tmp_path, "kill")
    assert out.returncode == -9 and words[:1] == ["seen"], out.stderr
    pid, server = int(words[1]), int(words[2])
    assert _gone_within(server, 10), "the fork server outlived the process that started it"
    assert _gone_within(pid, 10), "a child of the fork server outlived the process that started it"
