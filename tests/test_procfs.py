"""Reading a process from /proc: the fields the front and the benchmarks use."""

from __future__ import annotations

import os
import sys

from deployments import procfs


def test_reads_this_process():
    me = procfs.read(os.getpid())
    assert me is not None
    assert me.pid == os.getpid()
    assert me.ppid == os.getppid()
    assert me.state == "R"  # it is running: it reads its own stat
    assert me.cmdline == " ".join(sys.orig_argv)
    assert me.cpu_ticks >= 0
    assert os.getpid() in procfs.pids()


def test_cpu_time_is_user_plus_system_after_a_command_name_with_parentheses(tmp_path):
    d = tmp_path / "42"
    d.mkdir()
    # fields 3-13, then utime (14) = 7 and stime (15) = 5, then the rest of the 52
    fields = ["S", "41", *["0"] * 9, "7", "5", *["0"] * 37]
    (d / "stat").write_text("42 (a) b (c) " + " ".join(fields) + "\n")
    (d / "cmdline").write_bytes(b"ray::ServeReplica:openai:Ingress\0--flag\0")
    (tmp_path / "self").mkdir()
    p = procfs.read(42, tmp_path)
    assert (p.state, p.ppid, p.cpu_ticks) == ("S", 41, 12)
    assert p.cmdline == "ray::ServeReplica:openai:Ingress --flag"
    assert procfs.pids(tmp_path) == [42]


def test_a_process_that_is_gone_reads_as_none(tmp_path):
    assert procfs.read(12345, tmp_path) is None
