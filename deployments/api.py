"""The OpenAI HTTP app: the route modules of ``deployments/routes/`` over one state object, with
the middleware and the error handlers.

``create_app(router)`` builds the ASGI app. In production the front deployment
(``deployments/ingress.py``) builds it on each replica around its models' handles (in-process
for co-located models, Ray Serve deployment handles for the others); the fast tests build it
around in-process servers through the same handle interface, so the routes are the same code.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import metrics, protocol, ratelimit
from deployments.auth import KeyStore
from deployments.config import ServerConfig
from deployments.errors import APIError, ErrorKind, not_a_json_object
from deployments.middleware import Authenticate, BodyLimit
from deployments.routes import audio, chat, embeddings, health, models, moderations, responses, tokenizer
from deployments.routes import batch as routes_batch
from deployments.routes.common import AppState, as_api_error, error_response
from deployments.routing import Router

ROUTES = (health, models, chat, embeddings, audio, moderations, responses, tokenizer)


def create_app(
    router: Router,
    keys: KeyStore | None = None,
    server: ServerConfig | None = None,
    limiter: ratelimit.ReplicaLimiter | None = None,
    batch: Any = None,
) -> FastAPI:
    """The OpenAI routes over ``router``; ``keys`` (none: open) and ``server`` settings; ``limiter``
    applies the keys' rate limits (default, when a key has some: this process's own ledger);
    ``batch``, the Batch API's service, adds the Files and Batches routes."""
    keys = keys or KeyStore([])
    state = AppState(router, server or ServerConfig(), batch)
    app = FastAPI(
        title="OpenAI-compatible model server",
        description="OpenAI API (models, chat completions, completions, embeddings, audio transcriptions) on Ray Serve.",
        version="0.1.0",
    )
    app.state.serving = state
    _add_middleware(app, keys, state, limiter)
    _add_error_handlers(app, state.retry_after_s)
    for module in ROUTES:
        app.include_router(module.router)
    if batch is not None:
        app.include_router(routes_batch.router)
    return app


def _add_middleware(app: FastAPI, keys: KeyStore, state: AppState, limiter) -> None:
    """The last added runs first: metrics, body limit, CORS, key, rate limit, then the route."""
    server = state.server
    if keys.limited:  # added before Authenticate, so it runs after it, with the caller's key
        app.add_middleware(ratelimit.RateLimit, limiter=limiter or ratelimit.ReplicaLimiter())
    app.add_middleware(Authenticate, keys=keys, public_paths=server.public_paths)
    if server.cors_allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        # added after Authenticate, so it runs first: a preflight needs no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=server.cors_allow_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Retry-After", *ratelimit.HEADERS],
        )
    app.add_middleware(BodyLimit, max_bytes=server.max_body_bytes)
    metrics.install(app, state.router)  # outermost: sees every answer, 401s and 413s included


def _add_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Every failure answers with an OpenAI error body (``deployments/errors.py``'s table)."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        if errors and tuple(errors[0].get("loc", ())) == ("body",):
            # The body as a whole is missing or not a JSON object.
            return error_response(not_a_json_object())
        return error_response(protocol.validation_error(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        kind = {404: ErrorKind.NOT_FOUND, 405: ErrorKind.METHOD_NOT_ALLOWED}.get(exc.status_code)
        if kind is None:
            kind = ErrorKind.INVALID_REQUEST if exc.status_code < 500 else ErrorKind.INTERNAL
        response = error_response(APIError(kind, str(exc.detail), code=None))
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception):
        return error_response(as_api_error(exc, retry_after_s))
