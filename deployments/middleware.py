"""The front's ASGI middleware: the body-size limit and API-key authentication.

Pure ASGI middleware rather than ``@app.middleware``: Starlette's BaseHTTPMiddleware gets between
a streaming response and the client's disconnect. (The rate limit is ``deployments/ratelimit.py``,
the metrics ``deployments/metrics.py``; ``deployments/api.py`` sets the order.)
"""

from __future__ import annotations

from deployments.auth import KeyStore, bearer
from deployments.errors import APIError, ErrorKind, invalid
from deployments.routes.common import error_response


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
            return await error_response(error)(scope, receive, send)
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
            await error_response(error)(scope, receive, send)


class Authenticate:
    """ASGI middleware: ``Authorization: Bearer <key>`` on every path but the public ones.

    The matching key (or None when the server is open) is left in ``scope["state"]["key"]``
    for the routes, which check it against the model asked for.
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
                return await error_response(APIError(ErrorKind.AUTHENTICATION, message))(scope, receive, send)
            scope["state"]["key"] = key
        await self.app(scope, receive, send)
