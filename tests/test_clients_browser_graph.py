"""The browser chat UI row: a page on another origin streams a chat completion with ``fetch``,
driven in headless Chromium against a running graph with CORS on.

The app is ``serve_config.yaml`` with two edits: ``server.cors_allow_origins`` lists the page's
origin, and ``API_KEYS`` is set (so the page sends ``Authorization``, which needs a preflight that
itself needs no key). The page (``tests/clients/browser/chat.html``) is served by
``http.server`` on its own port; when done it posts a JSON report back to that server.
"""

from __future__ import annotations

import functools
import json
import queue
import shutil
import subprocess
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from tests.conftest import REPO, openai_clients, start_app

pytestmark = pytest.mark.graph

CHAT_MODEL = "smollm2-135m-instruct"
KEY = "sk-browser-test"
PAGE_DIR = REPO / "tests" / "clients" / "browser"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium is not installed: run `make clients` (Debian's `chromium` package)")


class _PageHandler(SimpleHTTPRequestHandler):
    """Serves the page; ``POST /report`` hands the page's report to the test."""

    reports: queue.Queue

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.reports.put(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def page_server():
    """``tests/clients/browser`` over HTTP on 127.0.0.1 (the allowed origin): (port, reports)."""
    reports: queue.Queue = queue.Queue()
    handler = type("Handler", (_PageHandler,), {"reports": reports})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(PAGE_DIR)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], reports
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def cors_app(page_server):
    chromium()  # skip before starting an app when there is no browser to drive
    origin = f"http://127.0.0.1:{page_server[0]}"

    def tweak(config):
        config["applications"][0]["args"]["server"]["cors_allow_origins"] = [origin]

    tmp = Path(tempfile.mkdtemp(prefix="browser-"))
    app = start_app("serve_config.yaml", tmp, tweak, env={"API_KEYS": KEY})
    yield app
    app.stop()


def open_page(url: str, page_server, tmp_path: Path) -> dict:
    """Load ``url`` in headless Chromium until the page posts its report; the report."""
    _, reports = page_server
    while not reports.empty():  # a late report from an earlier page
        reports.get_nowait()
    log = open(tmp_path / "chromium.log", "w")
    browser = subprocess.Popen(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", url], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        return reports.get(timeout=240)
    except queue.Empty:
        pytest.fail(f"the page sent no report within 240 s; Chromium said:\n{(tmp_path / 'chromium.log').read_text()[-3000:]}")
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=30)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()
        log.close()


def page_url(host: str, page_server, app) -> str:
    return f"http://{host}:{page_server[0]}/chat.html?" + urlencode({"api": app.base_url + "/v1", "model": CHAT_MODEL, "key": KEY})


def test_preflight_allows_the_page_origin_only(cors_app, page_server):
    headers = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = httpx.options(
        cors_app.base_url + "/v1/chat/completions", headers={"Origin": f"http://127.0.0.1:{page_server[0]}", **headers}, timeout=30
    )
    assert allowed.status_code == 200, allowed.text  # no key needed for a preflight
    assert allowed.headers["access-control-allow-origin"] == f"http://127.0.0.1:{page_server[0]}"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    allowed_headers = {h.strip() for h in allowed.headers["access-control-allow-headers"].lower().split(",")}
    assert {"authorization", "content-type"} <= allowed_headers
    other = httpx.options(cors_app.base_url + "/v1/chat/completions", headers={"Origin": "http://evil.example", **headers}, timeout=30)
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_browser_page_streams_a_chat_completion(cors_app, page_server, tmp_path):
    report = open_page(page_url("127.0.0.1", page_server, cors_app), page_server, tmp_path)
    assert "failure" not in report, report
    chat = report["chat"]
    assert chat["status"] == 200 and chat["contentType"].startswith("text/event-stream")
    assert chat["problems"] == [] and chat["done"] == 1 and chat["leftover"] == ""
    assert chat["finish"] == "stop" and chat["chunks"] >= 2
    client = openai_clients(cors_app)[0].with_options(api_key=KEY)
    expected = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0, max_tokens=40
    )
    assert chat["text"] == expected.choices[0].message.content and "Paris" in chat["text"]
    # error bodies are readable cross-origin too (CORS headers on the 401)
    assert report["wrongKey"]["status"] == 401 and report["wrongKey"]["error"]["type"] == "authentication_error"


def test_browser_blocks_an_origin_not_listed(cors_app, page_server, tmp_path):
    """The same page from ``localhost`` (another origin): the browser refuses, so the success
    above is the CORS configuration's doing."""
    report = open_page(page_url("localhost", page_server, cors_app), page_server, tmp_path)
    assert report == {"failure": "TypeError: Failed to fetch"}
