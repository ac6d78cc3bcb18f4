"""The serving environment of the fast path (``configs/serving.env``), and what is in force.

Ray Serve reads its ``RAY_SERVE_*`` settings from the environment of each process when Ray
starts, so the app cannot set them itself: ``make serve``, the tests and the benchmarks pass the
file's settings to ``serve run``; the KubeRay manifest carries them as container env. The front
says at start-up, in one line, which serving mode it runs in, and warns about each setting of
the file that its process does not have.
"""

from __future__ import annotations

import os
from pathlib import Path

PATH = Path(__file__).resolve().parent.parent / "configs" / "serving.env"


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


def missing_settings(fast_path_models: bool, environ: dict[str, str] | None = None) -> list[str]:
    """A warning for each setting of the file that this process's environment lacks."""
    environ = os.environ if environ is None else environ
    what = "the co-located models' streams pay for it" if fast_path_models else "requests pay for it"
    return [
        f"{key}={value} is not in this replica's environment (it has {environ.get(key)!r}): {what}. "
        f"Start with `make serve`, or pass configs/serving.env to `serve run` (README)."
        for key, value in load().items()
        if environ.get(key) != value
    ]


def startup_line(colocated: list[str], environ: dict[str, str] | None = None) -> str:
    """The one log line that says how this front serves."""
    environ = os.environ if environ is None else environ
    front = "HAProxy direct ingress" if environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "Ray's HTTP proxy"
    loop = "on the replica's loop" if environ.get("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD") == "0" else "in a separate thread"
    if colocated:
        models = f"fast path for {', '.join(colocated)} (in-process, no Ray hop)"
    else:
        models = "no co-located model: every model behind a deployment handle"
    return f"Serving mode: {front}, requests {loop}; {models}."
