"""One batch line through what the online route does: the request's validation (the same pydantic
model and the same 400 body), the model's routing and key check (``Router.get``), the server's
``max_tokens`` limit, and the model server's handle method. Returns ``(status, body)``: the
status and body the online API would have answered with. ``execute_lines`` answers several lines
at once, embedding lines in one call to their model's server."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError

from deployments import protocol
from deployments.auth import Key
from deployments.config import ServerConfig
from deployments.errors import APIError, invalid, not_a_json_object
from deployments.routes.common import as_api_error, check_max_tokens
from deployments.routing import EMBEDDING, LLM

# endpoint -> (request model, model kind, handle method, max-token params)
ROUTES = {
    "/v1/chat/completions": (protocol.ChatCompletionRequest, LLM, "chat", ("max_completion_tokens", "max_tokens")),
    "/v1/completions": (protocol.CompletionRequest, LLM, "completion", ("max_tokens",)),
    "/v1/embeddings": (protocol.EmbeddingRequest, EMBEDDING, "embed", ()),
}


def key_for(models: list[str] | None) -> Key:
    """A stand-in for the batch owner's key: only its model permissions matter to a line."""
    return Key(b"", None if models is None else frozenset(models))


def _checked(router, server: ServerConfig, endpoint: str, body: Any, models: list[str] | None):
    """The line's request, validated as the online route validates it, and its model's route;
    raises the error the online route would answer with."""
    model_cls, kind, _, token_params = ROUTES[endpoint]
    if not isinstance(body, dict):
        raise not_a_json_object()
    if body.get("stream"):
        raise invalid("A batch request cannot stream: leave out 'stream'.", "stream", "invalid_value")
    try:
        request = model_cls.model_validate(body)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]
        raise protocol.validation_error(errors) from None
    route = router.get(request.model, kind, key_for(models))
    for param in token_params:
        check_max_tokens(server, getattr(request, param, None), param)
    return route, request


def _answer(router, exc: BaseException) -> tuple[int, dict]:
    error: APIError = as_api_error(exc, router.retry_after_s)
    return error.status, error.body()


async def execute_line(router, server: ServerConfig, endpoint: str, body: Any, models: list[str] | None) -> tuple[int, dict]:
    try:
        route, request = _checked(router, server, endpoint, body, models)
        return 200, await getattr(route.handle, ROUTES[endpoint][2]).remote(request)
    except Exception as exc:  # noqa: BLE001 - every failure is the line's answer
        return _answer(router, exc)


async def execute_lines(router, server: ServerConfig, endpoint: str, bodies: list[Any], models: list[str] | None) -> list[tuple[int, dict]]:
    """Several lines of one batch, each answered as ``execute_line`` answers it. Embedding lines
    for one model go to its server in one ``embed_many`` call (one handle call, their inputs
    encoded together); chat and completion lines run side by side, a call each."""
    if endpoint != "/v1/embeddings":
        return list(await asyncio.gather(*(execute_line(router, server, endpoint, b, models) for b in bodies)))
    answers: list[tuple[int, dict] | None] = [None] * len(bodies)
    groups: dict[str, tuple[Any, list[int], list]] = {}
    for i, body in enumerate(bodies):
        try:
            route, request = _checked(router, server, endpoint, body, models)
        except Exception as exc:  # noqa: BLE001
            answers[i] = _answer(router, exc)
            continue
        group = groups.setdefault(route.id, (route, [], []))
        group[1].append(i)
        group[2].append(request)

    async def run(route, indexes: list[int], requests: list) -> None:
        try:
            results = await route.handle.embed_many.remote(requests)
        except Exception as exc:  # noqa: BLE001 - the call failed: every line of it gets the answer
            results = [exc] * len(indexes)
        for i, result in zip(indexes, results):
            answers[i] = _answer(router, result) if isinstance(result, BaseException) else (200, result)

    await asyncio.gather(*(run(*group) for group in groups.values()))
    return answers  # type: ignore[return-value]
