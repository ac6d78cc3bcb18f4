"""The fast path's serving environment (``configs/serving.env``) reaches every way of starting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployments import serving_env

REPO = Path(__file__).resolve().parents[1]


def test_the_file_turns_on_haproxy_and_the_same_loop():
    settings = serving_env.load()
    assert settings["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert settings["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert all(key.startswith("RAY_") for key in settings)
    assert float(settings["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"]) <= 1  # replica changes seen within a second


def test_malformed_line_is_an_error(tmp_path):
    path = tmp_path / "bad.env"
    path.write_text("# fine\nRAY_X=1\nnot a setting\n")
    with pytest.raises(ValueError, match="bad.env:3"):
        serving_env.load(path)


def test_make_serve_passes_every_setting_to_serve_run():
    line = subprocess.run(["make", "-n", "serve"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    command = next(l for l in line.splitlines() if "serve run serve_config.yaml" in l)
    for key, value in serving_env.load().items():
        assert f"{key}={value}" in command.split(), key
    # Ray, and every process it starts, under SCHED_BATCH where Linux has it
    if serving_env.scheduler_prefix():
        assert " ".join(serving_env.SCHEDULER) + " " in command


def test_the_scheduler_prefix_starts_a_process_under_sched_batch():
    prefix = serving_env.scheduler_prefix()
    if not prefix:
        pytest.skip("no SCHED_BATCH or no chrt on this OS")
    code = "import os; print(os.sched_getscheduler(0) == os.SCHED_BATCH)"
    out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
    assert serving_env.batch_scheduled() is (os.sched_getscheduler(0) == os.SCHED_BATCH)


def test_startup_line_and_warnings_say_what_is_in_force():
    full = serving_env.load()
    assert serving_env.missing_settings(True, full) == []
    assert serving_env.missing_settings(True, full, batch=True) == []
    line = serving_env.startup_line(["m"], full, batch=True)
    assert "HAProxy direct ingress" in line and "replica's loop" in line and "fast path for m" in line
    assert "CPU scheduling: SCHED_BATCH" in line
    assert "CPU scheduling: the normal policy" in serving_env.startup_line(["m"], full, batch=False)
    unbatched = serving_env.missing_settings(True, full, batch=False)
    assert len(unbatched) == 1 and "SCHED_BATCH" in unbatched[0] and "chrt --batch 0" in unbatched[0]
    partial = {k: v for k, v in full.items() if k != "RAY_SERVE_ENABLE_HA_PROXY"}
    warnings = serving_env.missing_settings(True, partial)
    assert len(warnings) == 1 and warnings[0].startswith("RAY_SERVE_ENABLE_HA_PROXY=1")
    assert "Ray's HTTP proxy" in serving_env.startup_line([], partial)
