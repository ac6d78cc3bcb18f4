"""Cold start: wall time from ``serve run serve_config.yaml`` to the first successful answers.

Ray is not running before (the suite stops each app with ``ray stop``); the default models are
already prepared (``make bench`` depends on ``make models``), so this is start-up, not the
one-time GGUF conversion. While the app starts, one chat completion, one embedding request and
``/health`` are retried every 0.25 s; each one's first success is recorded.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = "serve_config.yaml"


def start_timed(config_file: str = CONFIG, timeout: float = 600):
    """Start ``config_file`` with ``serve run`` and time its first answers: (app, figures).

    The app is left running for the caller (who must ``stop()`` it)."""
    from tests.conftest import ServeApp, free_port, hold_graph_lock

    hold_graph_lock()
    config = yaml.safe_load((REPO / config_file).read_text())
    args = config["applications"][0]["args"]
    chat_model, embed_model = args["llms"][0]["id"], args["embeddings"][0]["id"]
    port = free_port()
    config.setdefault("http_options", {})["port"] = port
    tmp = Path(tempfile.mkdtemp(prefix="bench-coldstart-"))
    path = tmp / Path(config_file).name
    path.write_text(yaml.safe_dump(config))
    probes = {
        "health": ("GET", "/health", None),
        "chat": ("POST", "/v1/chat/completions", {"model": chat_model, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}),
        "embedding": ("POST", "/v1/embeddings", {"model": embed_model, "input": "Hi"}),
    }
    first: dict[str, float] = {}
    t0 = time.monotonic()
    app = ServeApp(path, port, tmp / "serve.log")
    try:
        with httpx.Client(base_url=app.base_url, timeout=30) as client:
            while len(first) < len(probes):
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"no answer from {sorted(set(probes) - set(first))} within {timeout} s:\n{app.log_tail()}")
                if app.proc.poll() is not None:
                    raise RuntimeError(f"serve run exited with {app.proc.returncode}:\n{app.log_tail()}")
                if "failed with exception" in app.log_path.read_text(errors="replace"):
                    raise RuntimeError(f"the application failed to deploy:\n{app.log_tail(120)}")
                for name, (method, url, body) in probes.items():
                    if name in first:
                        continue
                    try:
                        r = client.request(method, url, json=body)
                    except httpx.HTTPError:
                        continue
                    if r.status_code == 200 and (name != "health" or r.json().get("status") == "ok"):
                        first[name] = round(time.monotonic() - t0, 1)
                time.sleep(0.25)
    except BaseException:
        app.stop()
        raise
    figures = {
        "config": config_file,
        "to_health_ok_s": first["health"],
        "to_first_chat_s": first["chat"],
        "to_first_embedding_s": first["embedding"],
        "to_all_answering_s": max(first.values()),
        "chat_model": chat_model,
        "embedding_model": embed_model,
    }
    print(f"cold start of {config_file}: {figures}", flush=True)
    return app, figures
