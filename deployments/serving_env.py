"""The serving environment of the fast path (``configs/serving.env``), and what is in force.

Ray Serve reads its ``RAY_SERVE_*`` settings from the environment of each process when Ray
starts, so the app cannot set them itself: ``make serve``, the tests and the benchmarks pass the
file's settings to ``serve run``; the KubeRay manifest carries them as container env. The front
says at start-up, in one line, which serving mode it runs in, and warns about each setting of
the file that its process does not have.

One setting is not an environment variable: the CPU scheduling policy. Ray's processes (the
raylet, the GCS, the dashboard's modules, the controller, every idle actor) each wake up 40 to
230 times a second; on a small machine where vLLM's OpenMP threads hold every core, each wake-up
under Linux's normal policy preempts one of those threads and the other spins at the barrier.
Started under ``SCHED_BATCH`` (``chrt --batch 0``, inherited by every process Ray starts),
Ray's processes still get their share of the CPU but no longer preempt a running thread when
they wake (sched(7)): c=32 chat throughput +5% to +25% on 2 cores (BENCHMARKS.md, session 15). So
``make serve``, the tests, the README's command line and the KubeRay manifest start Ray under
it, and the front warns when it is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PATH = Path(__file__).resolve().parent.parent / "configs" / "serving.env"

# The command prefix that starts Ray (and so every process it starts) under SCHED_BATCH.
SCHEDULER = ("chrt", "--batch", "0")


def scheduler_prefix() -> list[str]:
    """:data:`SCHEDULER` where the OS has SCHED_BATCH and ``chrt`` (Linux), else nothing."""
    return list(SCHEDULER) if hasattr(os, "SCHED_BATCH") and shutil.which(SCHEDULER[0]) else []


def batch_scheduled() -> bool | None:
    """Whether this process runs under SCHED_BATCH; None where the OS has no such policy."""
    if not hasattr(os, "SCHED_BATCH"):
        return None
    return os.sched_getscheduler(0) == os.SCHED_BATCH


def load(path: Path = PATH) -> dict[str, str]:
    """The file's settings, in order (``KEY=VALUE`` lines; ``#`` comments and blank lines skipped)."""
    settings = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        settings[key.strip()] = value.strip()
    return settings


def missing_settings(
    fast_path_models: bool, environ: dict[str, str] | None = None, batch: bool | None = None
) -> list[str]:
    """A warning for each setting of the file that this process's environment lacks, and one
    when ``batch`` is False: the process runs under the normal CPU scheduling policy (the front
    passes :func:`batch_scheduled`; None: not checked, or the OS has no SCHED_BATCH)."""
    environ = os.environ if environ is None else environ
    what = "the co-located models' streams pay for it" if fast_path_models else "requests pay for it"
    warnings = [
        f"{key}={value} is not in this replica's environment (it has {environ.get(key)!r}): {what}. "
        f"Start with `make serve`, or pass configs/serving.env to `serve run` (README)."
        for key, value in load().items()
        if environ.get(key) != value
    ]
    if batch is False:
        warnings.append(
            "Ray was not started under SCHED_BATCH: its processes preempt the engine's threads each "
            f"time they wake up (c=32 chat 5-25% slower on 2 cores). Start with `make serve`, or "
            f"`{' '.join(SCHEDULER)} serve run ...` (README)."
        )
    return warnings


def startup_line(colocated: list[str], environ: dict[str, str] | None = None, batch: bool | None = None) -> str:
    """The one log line that says how this front serves (``batch`` as in :func:`missing_settings`)."""
    environ = os.environ if environ is None else environ
    front = "HAProxy direct ingress" if environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "Ray's HTTP proxy"
    loop = "on the replica's loop" if environ.get("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD") == "0" else "in a separate thread"
    if colocated:
        models = f"fast path for {', '.join(colocated)} (in-process, no Ray hop)"
    else:
        models = "no co-located model: every model behind a deployment handle"
    cpu = {True: "SCHED_BATCH", False: "the normal policy", None: "the OS default"}[batch]
    return f"Serving mode: {front}, requests {loop}; {models}; CPU scheduling: {cpu}."
