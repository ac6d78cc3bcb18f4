"""What every route module shares: the app's state, the documented error answers, and the two
ways a route answers with a model server's result (a finished body, or a relayed SSE stream).

The routes only parse, route and relay: model servers return finished response dicts (or text),
SSE text for streams, and raise :class:`APIError` for client mistakes.
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing, nullcontext
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from deployments import jsontext, protocol, sse
from deployments.config import ServerConfig
from deployments.errors import APIError, ErrorKind, internal, invalid, unavailable
from deployments.responses import ResponseStore
from deployments.routing import Router

logger = logging.getLogger("ray.serve")

# Documented answers (OpenAPI): every route may answer with these OpenAI error bodies.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": protocol.ErrorResponse, "description": text}
    for status, text in {
        400: "invalid request (the error names the parameter)",
        401: "missing or wrong API key",
        403: "this API key may not use the model",
        404: "unknown model or path",
        429: "the model is at capacity, or the API key is over its rpm/tpm limit (x-ratelimit-* headers); see Retry-After",
        503: "the model is loading or has no healthy replica; see Retry-After",
    }.items()
}
SSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "a completion, or an SSE stream of chunks when stream is true"}
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class OnlineTraffic:
    """When this front replica last served an online model request (``last``, ``time.time()``):
    stamped as a request starts, as each of its stream's messages goes, and as it ends. The batch
    driver reads it with each batch answer and yields to online traffic; ``notify`` (the batch
    driver's, when there is one) hears of it at once, at most once every ``NOTIFY_EVERY_S``, so
    the first online request after a quiet spell does not wait for a batch answer to be seen."""

    NOTIFY_EVERY_S = 1.0

    def __init__(self) -> None:
        self.last = 0.0
        self.notify: Callable[[float], None] | None = None
        self._notified = float("-inf")

    def seen(self) -> None:
        self.last = now = time.time()
        if self.notify is not None and now - self._notified >= self.NOTIFY_EVERY_S:
            self._notified = now
            self.notify(now)


@dataclass
class AppState:
    """The one object the routes read (``app.state.serving``): the models and the server's settings."""

    router: Router
    server: ServerConfig = field(default_factory=ServerConfig)
    batch: Any = None  # the Batch API's service (deployments/batch/), when enabled
    online: OnlineTraffic = field(default_factory=OnlineTraffic)
    responses: ResponseStore = field(init=False)

    def __post_init__(self) -> None:
        self.router.retry_after_s = self.server.retry_after_s
        self.responses = ResponseStore(self.server.responses_store_size)

    @property
    def retry_after_s(self) -> int:
        return self.server.retry_after_s

    def check_max_tokens(self, value: int | None, param: str) -> None:
        check_max_tokens(self.server, value, param)

    async def call(self, method, *args) -> Response:
        """A model server's finished answer: JSON, or text (the audio routes' text formats)."""
        self.online.seen()
        try:
            result = await method.remote(*args)
        except Exception as exc:  # noqa: BLE001
            return error_response(as_api_error(exc, self.retry_after_s))
        finally:
            self.online.seen()
        if isinstance(result, str):
            return Response(result, media_type="text/plain; charset=utf-8")
        return JSONBody(result)

    async def stream(self, method, *args) -> Response:
        """A model server's SSE stream, relayed. The first message is awaited before answering,
        so a request error is still a real 4xx rather than an error event in a 200."""
        self.online.seen()
        try:
            iterator = method.remote(*args).__aiter__()
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = sse.DONE
        except Exception as exc:  # noqa: BLE001
            return error_response(as_api_error(exc, self.retry_after_s))
        return StreamingResponse(_relay(first, iterator, self.retry_after_s, self.online), media_type="text/event-stream", headers=STREAM_HEADERS)


class JSONBody(JSONResponse):
    """A JSON answer, written by the server's one JSON encoder (``deployments/jsontext.py``)."""

    def render(self, content: Any) -> bytes:
        return jsontext.dumps(content)


def check_max_tokens(server: ServerConfig, value: int | None, param: str) -> None:
    """The server's cap on generated tokens (``server.max_tokens_limit``), a 400 naming ``param``."""
    limit = server.max_tokens_limit
    if limit is not None and value is not None and value > limit:
        raise invalid(f"{param} is {value}; this server allows at most {limit}.", param, "max_tokens_limit")


def app_state(request: Request) -> AppState:
    return request.app.state.serving


def error_response(error: APIError) -> JSONBody:
    return JSONBody(error.body(), status_code=error.status, headers=error.headers())


def as_api_error(exc: BaseException, retry_after_s: int = 2) -> APIError:
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
    if "BackPressure" in name:
        return APIError(
            ErrorKind.RATE_LIMITED,
            "The model is at capacity (its queue is full); retry after the time in Retry-After.",
            retry_after=retry_after_s,
        )
    if any(word in name for word in ("ActorDied", "ActorUnavailable", "Unavailable", "WorkerCrashed", "ActorError")):
        return unavailable("The model's replica is unavailable; retry shortly.", retry_after_s)
    logger.error("Unhandled error: %r", exc, exc_info=exc)
    return internal()


async def _relay(first: str, rest: AsyncIterator[str], retry_after_s: int, online: OnlineTraffic) -> AsyncIterator[str]:
    """The rest of a model's stream after its first message; closed with the response, so a
    client that goes away stops the generation (in-process, and through a handle alike)."""
    yield first
    try:
        async with closing(rest):
            async for message in rest:
                online.seen()
                yield message
    except Exception as exc:  # noqa: BLE001 - the client gets an error event, not a cut stream
        yield sse.error_then_done(as_api_error(exc, retry_after_s).body())


def closing(stream):
    """``aclosing`` for async generators; a Ray response generator has no ``aclose`` (Ray cancels
    the call when it is dropped)."""
    return aclosing(stream) if hasattr(stream, "aclose") else nullcontext(stream)
