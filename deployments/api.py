"""The OpenAI HTTP surface: FastAPI routes, model routing, error conversion.

``create_app(router)`` builds the ASGI app. In production the ingress deployment
(``deployments/deployment.py``) builds it on each replica around Ray Serve deployment handles;
the fast tests build it around in-process servers through the same handle interface
(``.method.remote(...)``, ``.options(stream=True)``), so the routes are the same code in both.

The routes only parse, route and relay: model servers return finished response dicts, or SSE
text for streams, and raise :class:`APIError` for client mistakes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import protocol, sse
from deployments.errors import APIError, ErrorKind, internal, invalid, model_not_found, unavailable
from deployments.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

logger = logging.getLogger("ray.serve")

LLM, EMBEDDING = "llm", "embedding"


@dataclass
class ModelRoute:
    """One served model: its id, what it can do, and the handle of its deployment."""

    id: str
    kind: str  # LLM | EMBEDDING
    handle: Any
    aliases: list[str] = field(default_factory=list)
    stream_handle: Any = None
    card: dict[str, Any] | None = None  # filled from the deployment's info() on first use

    def __post_init__(self) -> None:
        if self.stream_handle is None:
            self.stream_handle = self.handle.options(stream=True)


class Router:
    """Maps ``model`` (id or alias) to a deployment handle."""

    def __init__(self, routes: list[ModelRoute]) -> None:
        self.routes = routes
        self._by_name: dict[str, ModelRoute] = {}
        for route in routes:
            for name in [route.id, *route.aliases]:
                self._by_name[name] = route

    def get(self, model: str, kind: str | None = None) -> ModelRoute:
        route = self._by_name.get(model)
        if route is None:
            raise model_not_found(model)
        if kind is not None and route.kind != kind:
            what = "an embedding model" if route.kind == EMBEDDING else "a chat/completions model"
            use = "/v1/embeddings" if route.kind == EMBEDDING else "/v1/chat/completions or /v1/completions"
            raise invalid(f"The model '{model}' is {what}; use it with {use}.", "model", "model_not_supported")
        return route

    async def card(self, route: ModelRoute) -> dict[str, Any]:
        if route.card is None:
            info = await route.handle.info.remote()
            route.card = protocol.model_card(info.pop("id"), info.pop("created"), info.pop("owned_by"), **info)
        return route.card


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


def as_api_error(exc: BaseException) -> APIError:
    """Whatever a handle call raised, as the error the client should see.

    Ray re-raises a deployment's exception as a subclass of it (``RayTaskError`` mixed in), so an
    :class:`APIError` raised by a model server is still an :class:`APIError` here. A replica that
    died or is unreachable is a 503 the client may retry; anything else is our fault: a 500 with
    the detail in the log, not in the response.
    """
    if isinstance(exc, APIError):
        return exc
    cause = getattr(exc, "cause", None)
    if isinstance(cause, APIError):
        return cause
    name = type(exc).__name__
    if any(word in name for word in ("ActorDied", "ActorUnavailable", "Unavailable", "BackPressure", "WorkerCrashed")):
        return unavailable("The model's replica is unavailable; retry shortly.")
    logger.error("Unhandled error: %r", exc, exc_info=exc)
    return internal()


async def _relay_stream(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    try:
        async for message in rest:
            yield message
    except BaseException as exc:  # noqa: BLE001 - the client gets an error event, not a cut stream
        if not isinstance(exc, Exception):
            raise
        yield sse.error_then_done(as_api_error(exc).body())


async def _stream_or_error(stream) -> Response:
    """Wait for the first message before answering, so request errors stay real 4xx."""
    iterator = stream.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = sse.DONE
    except Exception as exc:  # noqa: BLE001
        return _error_response(as_api_error(exc))
    return StreamingResponse(
        _relay_stream(first, iterator),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _call(method, *args) -> Response:
    try:
        result = await method.remote(*args)
    except Exception as exc:  # noqa: BLE001
        return _error_response(as_api_error(exc))
    return JSONResponse(result)


def create_app(router: Router) -> FastAPI:
    app = FastAPI(
        title="OpenAI-compatible model server",
        description="OpenAI API (models, chat completions, completions, embeddings) on Ray Serve.",
        version="0.1.0",
    )
    app.state.router = router

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        if errors and tuple(errors[0].get("loc", ())) == ("body",):
            # The body as a whole is missing or not a JSON object.
            return _error_response(invalid("The request body must be a JSON object.", None, "invalid_json"))
        return _error_response(protocol.validation_error(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        kind = {404: ErrorKind.NOT_FOUND, 405: ErrorKind.METHOD_NOT_ALLOWED}.get(exc.status_code)
        if kind is None:
            kind = ErrorKind.INVALID_REQUEST if exc.status_code < 500 else ErrorKind.INTERNAL
        error = APIError(kind, str(exc.detail), code=None)
        response = _error_response(error)
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception):
        return _error_response(as_api_error(exc))

    @app.get("/health")
    async def health() -> JSONResponse:
        """Every model deployment's state (ready with its load, or unavailable); 503 if any is down."""
        models: dict[str, Any] = {}
        healthy = True
        for route in router.routes:
            try:
                models[route.id] = {"status": "ready", **await route.handle.stats.remote()}
            except Exception as exc:  # noqa: BLE001
                healthy = False
                models[route.id] = {"status": "unavailable", "error": type(exc).__name__}
        return JSONResponse({"status": "ok" if healthy else "degraded", "models": models}, status_code=200 if healthy else 503)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        """``ListModelsResponse``: every served model with its engine and capabilities."""
        cards = []
        for route in router.routes:
            try:
                cards.append(await router.card(route))
            except Exception as exc:  # noqa: BLE001 - a loading model is listed without details
                logger.warning("model %s has no info yet: %r", route.id, exc)
                cards.append(protocol.model_card(route.id, 0, "local", status="loading"))
        return JSONResponse(protocol.model_list(cards))

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> JSONResponse:
        """``Model``: one model by id or alias."""
        route = router.get(model_id)
        try:
            card = await router.card(route)
        except Exception as exc:  # noqa: BLE001
            raise as_api_error(exc) from exc
        return JSONResponse(card)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        """``CreateChatCompletionRequest`` -> completion, or an SSE stream of chunks."""
        route = router.get(body.model, LLM)
        if body.stream:
            return await _stream_or_error(route.stream_handle.chat_stream.remote(body))
        return await _call(route.handle.chat, body)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Response:
        """``CreateCompletionRequest`` (legacy completions)."""
        route = router.get(body.model, LLM)
        if body.stream:
            return await _stream_or_error(route.stream_handle.completion_stream.remote(body))
        return await _call(route.handle.completion, body)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> Response:
        """``CreateEmbeddingRequest`` -> ``CreateEmbeddingResponse``."""
        route = router.get(body.model, EMBEDDING)
        return await _call(route.handle.embed, body)

    return app

