"""Prometheus metrics of the ingress: ``GET /metrics``.

What one ingress replica saw, in Prometheus' text format (or OpenMetrics, if the scraper asks):

* ``model_server_requests_total{model, route, status}``: every answer, by model id (empty for
  requests that name none), route template (``/v1/chat/completions``, never the raw path;
  ``unmatched`` for unknown paths) and status code;
* ``model_server_prompt_tokens_total{model}`` and ``model_server_completion_tokens_total{model}``,
  from each response's ``usage`` (for streams: the counts the model server appends to every
  finished stream as an SSE comment, which is removed here -- see ``sse.usage_comment``). A
  route that builds its own answer from a model's (another API's shape) leaves the model's
  usage in ``request.state.usage``; routes name the model in ``request.state.model``;
* histograms by model and route: ``model_server_request_duration_seconds`` (arrival at the
  ingress to the last byte), and for streams ``model_server_time_to_first_token_seconds`` (to
  the first chunk with generated text) and ``model_server_inter_token_latency_seconds`` (the gaps
  between chunks with text: the model server joins the tokens of each ``stream_interval_ms``
  window into one chunk, so this is the latency per chunk, not per token);
* per model, read from the model deployments at scrape time (the path ``/health`` uses):
  ``model_server_model_state{model, state}`` (1 for the current one of ready, loading,
  unavailable), ``model_server_requests_running{model}``, ``model_server_requests_waiting{model}``
  and, where the engine reports it (vLLM), ``model_server_kv_cache_usage_ratio{model}``.

Each app (each ingress replica, and each app the tests build) has its own registry, never the
process-wide default one.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from deployments.errors import APIError, ErrorKind
from deployments.health import STATES, model_states
from deployments.usage import UsageTap

PREFIX = "model_server_"
# LLM requests take seconds to minutes; embedding requests milliseconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 30, 60)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)
STATS_TIMEOUT_S = 5.0  # a model that does not answer within this is reported without its load



class Metrics:
    """The series of one app, in its own registry."""

    def __init__(self, router) -> None:
        self.router = router
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests", "HTTP answers by model, route template and status code.", ["model", "route", "status"], registry=r
        )
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of answered requests.", ["model"], registry=r)
        self.completion_tokens = Counter(
            PREFIX + "completion_tokens", "Generated tokens of answered requests.", ["model"], registry=r
        )
        self.duration = Histogram(
            PREFIX + "request_duration_seconds", "From arrival at the ingress to the last byte of the answer.",
            ["model", "route"], buckets=DURATION_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds", "Streams: from arrival at the ingress to the first chunk with text.",
            ["model", "route"], buckets=TTFT_BUCKETS, registry=r,
        )
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Streams: time between chunks with text (tokens are joined per stream_interval_ms, so per chunk).",
            ["model", "route"], buckets=ITL_BUCKETS, registry=r,
        )
        self.models = _ModelGauges()
        r.register(self.models)

    def record(self, exchange: "_Exchange", model: str, route: str, usage: dict[str, int] | None = None) -> None:
        """Count one finished exchange; ``usage``: what a route that builds its own answer left in
        ``request.state.usage`` (else it is read from the answer)."""
        self.requests.labels(model, route, str(exchange.status)).inc()
        self.duration.labels(model, route).observe(exchange.finished - exchange.started)
        if exchange.first_text is not None:
            self.ttft.labels(model, route).observe(exchange.first_text - exchange.started)
            itl = self.itl.labels(model, route)
            for gap in exchange.gaps:
                itl.observe(gap)
        usage = usage or exchange.usage()
        if usage and exchange.status == 200:
            self.prompt_tokens.labels(model).inc(usage.get("prompt_tokens") or 0)
            if "completion_tokens" in usage:
                self.completion_tokens.labels(model).inc(usage["completion_tokens"] or 0)

    async def scrape(self, request: Request) -> Response:
        """``GET /metrics``. Any key that may use every model may scrape (or none, when the
        server is open or ``/metrics`` is in ``server.public_paths``)."""
        key = request.state.key
        if key is not None and key.models is not None:
            raise APIError(
                ErrorKind.PERMISSION, "This API key is limited to some models; /metrics needs a key for every model.",
                code="metrics_not_allowed",
            )
        self.models.states = await model_states(self.router.routes, STATS_TIMEOUT_S)
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(self.registry), media_type=content_type)


class _ModelGauges:
    """Per-model gauges from the states gathered just before each scrape."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}

    def describe(self):
        return []  # gathered at scrape time: nothing to check at registration

    def collect(self):
        state = GaugeMetricFamily(
            PREFIX + "model_state", "1 for the model's current state (ready, loading, unavailable), else 0.", labels=["model", "state"]
        )
        running = GaugeMetricFamily(PREFIX + "requests_running", "Requests the model's engine is running.", labels=["model"])
        waiting = GaugeMetricFamily(
            PREFIX + "requests_waiting", "Requests waiting in the model's replica (engine queue, or embedding batch queue).",
            labels=["model"],
        )
        kv = GaugeMetricFamily(
            PREFIX + "kv_cache_usage_ratio", "Fraction of the engine's KV cache in use (engines that report it).", labels=["model"]
        )
        for model, info in self.states.items():
            for name in STATES:
                state.add_metric([model, name], 1.0 if info["status"] == name else 0.0)
            if "running" in info:
                running.add_metric([model], info["running"])
            if "waiting" in info or "queued" in info:
                waiting.add_metric([model], info.get("waiting", info.get("queued")))
            if "kv_cache_usage" in info:
                kv.add_metric([model], info["kv_cache_usage"])
        return [state, running, waiting, kv]


class _Exchange(UsageTap):
    """What the middleware saw of one request/response: the answer's status and usage, and when
    its generated text came."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.perf_counter()
        self.finished = self.started
        self.first_text: float | None = None
        self.last_text = 0.0
        self.gaps: list[float] = []

    def on_text(self) -> None:
        now = time.perf_counter()
        if self.first_text is None:
            self.first_text = now
        else:
            self.gaps.append(now - self.last_text)
        self.last_text = now


class MetricsMiddleware:
    """Pure ASGI middleware (it must not get between a stream and its client): times each
    exchange, reads its status, usage and stream chunks, and records them when it ends."""

    def __init__(self, app, metrics: Metrics, routes) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's router, to name the route of answers given before routing

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})
        exchange = _Exchange()

        async def observing_send(message) -> None:
            if message["type"] == "http.response.start":
                exchange.start(message)
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                kept = exchange.feed(body)
                if kept is not body:
                    if not kept and message.get("more_body"):
                        return  # the chunk was only the usage comment
                    message = {**message, "body": kept}
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        except Exception:
            if exchange.status is None:
                exchange.status = 500  # answered by Starlette's error middleware, outside this one
            raise
        finally:
            exchange.finished = time.perf_counter()
            if exchange.status is None:
                exchange.status = 499  # the client went away before an answer (nginx's code for it)
            state = scope["state"]
            self.metrics.record(exchange, state.get("model") or "", self._route(scope), state.get("usage"))

    def _route(self, scope) -> str:
        route = scope.get("route")
        if route is None:  # answered before routing (401, a body over the limit) or unknown path
            route = next((r for r in self.routes.routes if r.matches(scope)[0] is not Match.NONE), None)
        return getattr(route, "path", None) or "unmatched"


def install(app, router) -> Metrics:
    """Add the metrics middleware (call after the other middlewares: the last added runs
    first, so it sees every answer) and the ``GET /metrics`` route."""
    metrics = Metrics(router)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router)
    app.add_api_route("/metrics", metrics.scrape, methods=["GET"], include_in_schema=False)
    return metrics
