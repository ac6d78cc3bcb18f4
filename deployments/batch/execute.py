"""One batch line through what the online route does: the request's validation (the same pydantic
model and the same 400 body), the model's routing and key check (``Router.get``), the server's
``max_tokens`` limit, and the model server's handle method. Returns ``(status, body)``: the
status and body the online API would have answered with."""

from __future__ import annotations

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


async def execute_line(router, server: ServerConfig, endpoint: str, body: Any, models: list[str] | None) -> tuple[int, dict]:
    model_cls, kind, method, token_params = ROUTES[endpoint]
    try:
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
        result = await getattr(route.handle, method).remote(request)
        return 200, result
    except Exception as exc:  # noqa: BLE001 - every failure is the line's answer
        error: APIError = as_api_error(exc, router.retry_after_s)
        return error.status, error.body()
