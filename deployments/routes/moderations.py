"""``POST /v1/moderations``: not served here, and said so in an OpenAI error body.

No moderation model ships with this server (a classifier for OpenAI's categories would have to
come from a model hub, which the server never reaches), so the route answers every request with
a 404 whose message says why. A 404 rather than a 501: the official clients raise
``NotFoundError`` at once, while they retry any 5xx (twice by default, with back-off).
"""

from __future__ import annotations

from fastapi import APIRouter

from deployments.errors import APIError, ErrorKind

NOT_SERVED = (
    "This server serves no moderation model, so /v1/moderations is not available here. "
    "GET /v1/models lists what it serves (chat, completions and embeddings)."
)


def not_served() -> APIError:
    return APIError(ErrorKind.NOT_FOUND, NOT_SERVED, code="moderations_not_served")


router = APIRouter()


@router.post("/v1/moderations", include_in_schema=False)  # nothing is offered: not in the OpenAPI document
async def moderations() -> None:
    raise not_served()
