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
import time
from contextlib import aclosing, nullcontext
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import metrics, protocol, ratelimit, responses, sse
from deployments.auth import Key, KeyStore, bearer
from deployments.config import ServerConfig
from deployments.errors import APIError, ErrorKind, internal, invalid, model_not_found, unavailable
from deployments.health import READY, model_states
from deployments.moderations import add_moderations_route
from deployments.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ResponsesRequest,
    TokenizeRequest,
)
from deployments.responses import ResponseStore

logger = logging.getLogger("ray.serve")

LLM, EMBEDDING, AUDIO = "llm", "embedding", "audio"
# what each kind of model is, and the routes that use it (for a 400 when a route gets another kind)
KINDS = {
    LLM: ("a chat/completions model", "/v1/chat/completions or /v1/completions"),
    EMBEDDING: ("an embedding model", "/v1/embeddings"),
    AUDIO: ("a speech-to-text model", "/v1/audio/transcriptions or /v1/audio/translations"),
}


class ModelRoute:
    """One served model: its id, what it can do, and the handle that reaches its server.

    The handle is a Ray Serve deployment handle (a model with a deployment of its own) or an
    in-process one (a model co-located in the front, ``deployments/inprocess.py``); both have the
    same interface. ``replicas`` counts, for the former, the replicas the handle can route to
    right now; a model without it is served in-process and ready unless told otherwise.
    """

    def __init__(
        self, id: str, kind: str, handle: Any, aliases: list[str] | None = None, replicas: Callable[[], int] | None = None
    ) -> None:
        self.id = id
        self.kind = kind  # LLM | EMBEDDING | AUDIO
        self.handle = handle
        self.aliases = list(aliases or [])
        self.stream_handle = handle.options(stream=True)
        self.card: dict[str, Any] | None = None  # filled from the server's info() on first use
        self.replicas = replicas
        self._ready = True
        # while not ready: a replica is on its way up (Serve replaces failed ones), so loading
        self.loading = True

    @property
    def ready(self) -> bool:
        """A replica can take the request now (else the client gets a prompt 503)."""
        return self.replicas() > 0 if self.replicas is not None else self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value


class Router:
    """Maps ``model`` (id or alias) to a deployment handle, for a caller's key."""

    def __init__(self, routes: list[ModelRoute]) -> None:
        self.routes = routes
        self.retry_after_s = 2  # set from ServerConfig by create_app
        self._by_name: dict[str, ModelRoute] = {}
        for route in routes:
            for name in [route.id, *route.aliases]:
                self._by_name[name] = route

    def get(self, model: str, kind: str | None = None, key: Key | None = None) -> ModelRoute:
        route = self._by_name.get(model)
        if route is None:
            raise model_not_found(model)
        if not self.allowed(route, key):
            raise APIError(
                ErrorKind.PERMISSION, f"This API key may not use the model '{model}'.", param="model", code="model_not_allowed"
            )
        if kind is not None and route.kind != kind:
            what, use = KINDS[route.kind]
            raise invalid(f"The model '{model}' is {what}; use it with {use}.", "model", "model_not_supported")
        if not route.ready:
            raise unavailable(f"The model '{model}' is loading or has no healthy replica; retry shortly.", self.retry_after_s)
        return route

    def id_of(self, model: str) -> str | None:
        """The id of the model ``model`` names (an id or an alias), or None."""
        route = self._by_name.get(model)
        return route.id if route else None

    @staticmethod
    def allowed(route: ModelRoute, key: Key | None) -> bool:
        return key is None or key.models is None or bool(key.models & {route.id, *route.aliases})

    async def card(self, route: ModelRoute) -> dict[str, Any]:
        if route.card is None:
            info = await route.handle.info.remote()
            route.card = protocol.model_card(info.pop("id"), info.pop("created"), info.pop("owned_by"), **info)
        return route.card


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


# The Responses API's stream: typed events, each with an ``event:`` name and a JSON ``data:`` line.
RESPONSE_EVENTS = {
    "content": {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                "required": ["event", "data"],
            }
        }
    },
    "description": "a response object, or an SSE stream of typed events when stream is true",
}


def _adapter_cards(card: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat model's LoRA adapters, each a model of its own for clients, served by its base."""
    return [
        protocol.model_card(
            name, card["created"], card["owned_by"], parent=card["id"], engine=card.get("engine"),
            capabilities=card.get("capabilities"), context_length=card.get("context_length"),
        )
        for name in card.get("lora_adapters", [])
    ]


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


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


async def _relay_stream(first: str, rest: AsyncIterator[str], retry_after_s: int) -> AsyncIterator[str]:
    """The rest of a model's stream after its first message; closed with the response, so a
    client that goes away stops the generation (in-process, and through a handle alike)."""
    yield first
    try:
        async with _closing(rest):
            async for message in rest:
                yield message
    except Exception as exc:  # noqa: BLE001 - the client gets an error event, not a cut stream
        yield sse.error_then_done(as_api_error(exc, retry_after_s).body())


def _closing(stream):
    """``aclosing`` for async generators; a Ray response generator has no ``aclose`` (Ray cancels
    the call when it is dropped)."""
    return aclosing(stream) if hasattr(stream, "aclose") else nullcontext(stream)


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` (by Content-Length, or while reading)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        error = invalid(
            f"The request body is larger than this server's limit of {self.max_bytes} bytes.", None, "request_too_large"
        )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _error_response(error)(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _BodyTooLarge:
            await _error_response(error)(scope, receive, send)


class Authenticate:
    """ASGI middleware: ``Authorization: Bearer <key>`` on every path but the public ones.

    The matching key (or None when the server is open) is left in ``scope["state"]["key"]``
    for the routes, which check it against the model asked for. A pure ASGI middleware rather
    than ``@app.middleware``: Starlette's BaseHTTPMiddleware gets between a streaming response
    and the client's disconnect.
    """

    def __init__(self, app, keys: KeyStore, public_paths: list[str]) -> None:
        self.app = app
        self.keys = keys
        self.public = set(public_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})["key"] = None
        if not self.keys.open and scope["path"] not in self.public and scope["method"] != "OPTIONS":
            header = dict(scope.get("headers") or []).get(b"authorization")
            presented = bearer(header.decode("latin-1") if header else None)
            key = self.keys.lookup(presented)
            if key is None:
                message = "Incorrect API key provided." if presented else "Missing API key: send it as 'Authorization: Bearer <key>'."
                return await _error_response(APIError(ErrorKind.AUTHENTICATION, message))(scope, receive, send)
            scope["state"]["key"] = key
        await self.app(scope, receive, send)


def create_app(
    router: Router, keys: KeyStore | None = None, server: ServerConfig | None = None, limiter: ratelimit.ReplicaLimiter | None = None,
    batch=None,
) -> FastAPI:
    """The OpenAI routes over ``router``; ``keys`` (none: open) and ``server`` settings; ``limiter``
    applies the keys' rate limits (default, when a key has some: this process's own ledger)."""
    keys = keys or KeyStore([])
    server = server or ServerConfig()
    retry = router.retry_after_s = server.retry_after_s
    app = FastAPI(
        title="OpenAI-compatible model server",
        description="OpenAI API (models, chat completions, completions, embeddings, audio transcriptions) on Ray Serve.",
        version="0.1.0",
    )
    app.state.router = router

    async def call(method, *args) -> Response:
        try:
            result = await method.remote(*args)
        except Exception as exc:  # noqa: BLE001
            return _error_response(as_api_error(exc, retry))
        if isinstance(result, str):  # text answers (the audio routes' text, srt and vtt formats)
            return Response(result, media_type="text/plain; charset=utf-8")
        return JSONResponse(result)

    async def stream_or_error(method, *args) -> Response:
        """Wait for the first message before answering, so request errors stay real 4xx."""
        try:
            iterator = method.remote(*args).__aiter__()
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = sse.DONE
        except Exception as exc:  # noqa: BLE001
            return _error_response(as_api_error(exc, retry))
        return StreamingResponse(
            _relay_stream(first, iterator, retry),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def check_max_tokens(value: int | None, param: str) -> None:
        limit = server.max_tokens_limit
        if limit is not None and value is not None and value > limit:
            raise invalid(f"{param} is {value}; this server allows at most {limit}.", param, "max_tokens_limit")

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
    metrics.install(app, router)  # outermost: sees every answer, 401s and 413s included

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
        response = _error_response(APIError(kind, str(exc.detail), code=None))
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception):
        return _error_response(as_api_error(exc, retry))

    @app.get("/health", responses={503: {"description": "a model deployment is loading or down"}})
    async def health() -> JSONResponse:
        """Every model deployment's state (ready with its load, loading, or unavailable); 503 unless all are ready."""
        models = await model_states(router.routes)
        healthy = all(state["status"] == READY for state in models.values())
        headers = {} if healthy else {"Retry-After": str(retry)}
        return JSONResponse(
            {"status": "ok" if healthy else "degraded", "models": models}, status_code=200 if healthy else 503, headers=headers
        )

    @app.get("/v1/models", responses={200: {"model": protocol.ModelList}, **ERRORS})
    async def list_models(request: Request) -> JSONResponse:
        """``ListModelsResponse``: every model this key may use, with engine and capabilities."""
        cards = []
        for route in router.routes:
            if not router.allowed(route, request.state.key):
                continue
            try:
                card = await router.card(route)
                cards += [card, *_adapter_cards(card)]
            except Exception as exc:  # noqa: BLE001 - a loading model is listed without details
                logger.warning("model %s has no info yet: %r", route.id, exc)
                cards.append(protocol.model_card(route.id, 0, "local", status="loading"))
        return JSONResponse(protocol.model_list(cards))

    @app.get("/v1/models/{model_id:path}", responses={200: {"model": protocol.ModelCard}, **ERRORS})
    async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
        """``Model``: one model by id or alias."""
        route = router.get(model_id, key=request.state.key)
        try:
            card = await router.card(route)
        except Exception as exc:  # noqa: BLE001
            raise as_api_error(exc, retry) from exc
        for adapter in _adapter_cards(card):
            if model_id in (adapter["id"], adapter["id"].split(":", 1)[1]):
                return JSONResponse(adapter)
        return JSONResponse(card)

    @app.post("/v1/chat/completions", responses={200: {"model": protocol.ChatCompletion, **SSE}, **ERRORS})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """``CreateChatCompletionRequest`` -> completion, or an SSE stream of chunks."""
        request.state.model = router.id_of(body.model)  # the metrics' model label (errors too)
        route = router.get(body.model, LLM, request.state.key)
        check_max_tokens(body.max_completion_tokens, "max_completion_tokens")
        check_max_tokens(body.max_tokens, "max_tokens")
        if body.stream:
            return await stream_or_error(route.stream_handle.chat_stream, body)
        return await call(route.handle.chat, body)

    @app.post("/v1/completions", responses={200: {"model": protocol.TextCompletion, **SSE}, **ERRORS})
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """``CreateCompletionRequest`` (legacy completions)."""
        request.state.model = router.id_of(body.model)
        route = router.get(body.model, LLM, request.state.key)
        check_max_tokens(body.max_tokens, "max_tokens")
        if body.stream:
            return await stream_or_error(route.stream_handle.completion_stream, body)
        return await call(route.handle.completion, body)

    @app.post("/v1/embeddings", responses={200: {"model": protocol.EmbeddingList}, **ERRORS})
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        """``CreateEmbeddingRequest`` -> ``CreateEmbeddingResponse``."""
        request.state.model = router.id_of(body.model)
        route = router.get(body.model, EMBEDDING, request.state.key)
        return await call(route.handle.embed, body)

    from deployments.audio_routes import add_audio_routes  # it uses this module's names

    add_audio_routes(app, router, call, stream_or_error)
    add_moderations_route(app)  # not served: a clear 404 body
    _add_responses_routes(app, router, ResponseStore(server.responses_store_size), check_max_tokens, retry)
    _add_tokenizer_routes(app, router)
    if batch is not None:  # the Batch API's service (deployments/batch/)
        from deployments.batch.routes import add_batch_routes

        add_batch_routes(app, batch)
    return app


def _add_tokenizer_routes(app: FastAPI, router: Router) -> None:
    """``/tokenize`` and ``/detokenize`` (vLLM's routes and shapes; also under ``/v1``)."""

    async def relay(method, body) -> JSONResponse:
        try:
            return JSONResponse(await method.remote(body))
        except Exception as exc:  # noqa: BLE001
            return _error_response(as_api_error(exc, router.retry_after_s))

    @app.post("/tokenize", responses={**ERRORS})
    @app.post("/v1/tokenize", include_in_schema=False)
    async def tokenize(body: TokenizeRequest, request: Request) -> JSONResponse:
        """A prompt, or chat messages as the model's template renders them, to token ids."""
        request.state.model = router.id_of(body.model)
        return await relay(router.get(body.model, LLM, request.state.key).handle.tokenize, body)

    @app.post("/detokenize", responses={**ERRORS})
    @app.post("/v1/detokenize", include_in_schema=False)
    async def detokenize(body: DetokenizeRequest, request: Request) -> JSONResponse:
        """Token ids to text."""
        request.state.model = router.id_of(body.model)
        return await relay(router.get(body.model, LLM, request.state.key).handle.detokenize, body)


def _add_responses_routes(app: FastAPI, router: Router, store: ResponseStore, check_max_tokens, retry: int) -> None:
    """``/v1/responses``: translated to a chat completion of the model (``responses.py``)."""

    @app.post("/v1/responses", responses={200: RESPONSE_EVENTS, **ERRORS})
    async def create_response(body: ResponsesRequest, request: Request) -> Response:
        """``CreateResponse``: text or message input, instructions, function tools, text formats,
        streaming, ``previous_response_id``."""
        request.state.model = router.id_of(body.model)
        route = router.get(body.model, LLM, request.state.key)
        check_max_tokens(body.max_output_tokens, "max_output_tokens")
        history = store.get(body.previous_response_id, "previous_response_id").messages if body.previous_response_id else []
        chat, conversation = responses.to_chat(body, history)
        rid, created = responses.new_id("resp"), time.time()
        if not body.stream:
            try:
                completion = await route.handle.chat.remote(chat)
            except Exception as exc:  # noqa: BLE001
                return _error_response(responses.rename_param(as_api_error(exc, retry)))
            request.state.usage = completion["usage"]  # for the metrics: this route builds its own answer
            response = responses.from_chat(body, rid, created, completion)
            if body.store is not False:
                store.put(response, conversation + responses.as_chat_messages(response["output"]))
            return JSONResponse(response)
        try:
            iterator = route.stream_handle.chat_stream.remote(chat).__aiter__()
            first = await iterator.__anext__()
        except Exception as exc:  # noqa: BLE001 - a request error before the stream: a real 4xx
            return _error_response(responses.rename_param(as_api_error(exc, retry)))
        translator = responses.StreamTranslator(body, rid, created)

        async def events() -> AsyncIterator[str]:
            for event in translator.start():
                yield event
            message: str | None = first
            try:
                while message is not None:
                    for payload in sse.data_payloads(message):
                        if payload is sse.DONE:
                            continue
                        if "error" in payload:
                            for event in translator.error(payload):
                                yield event
                            return
                        for event in translator.feed(payload):
                            yield event
                    message = await anext(iterator, None)
            except Exception as exc:  # noqa: BLE001 - the client gets an error event, not a cut stream
                for event in translator.error(as_api_error(exc, retry).body()):
                    yield event
                return
            for event in translator.finish():
                yield event
            request.state.usage = translator.usage
            if body.store is not False:
                store.put(translator.response, conversation + responses.as_chat_messages(translator.response["output"]))

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/responses/{response_id}", responses={**ERRORS})
    async def get_response(response_id: str) -> JSONResponse:
        """A stored response."""
        return JSONResponse(store.get(response_id).response)

    @app.delete("/v1/responses/{response_id}", responses={**ERRORS})
    async def delete_response(response_id: str) -> JSONResponse:
        """Forget a stored response."""
        store.delete(response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})
