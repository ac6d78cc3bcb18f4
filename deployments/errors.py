"""The one error table: every failure the API can report, as a value.

Code below HTTP (engines, model servers, validation) raises :class:`APIError` with an
:class:`ErrorKind`; the ingress turns it into the OpenAI error body with the status from this
table. Nothing here imports FastAPI, torch, vLLM or Ray, so the exception pickles cleanly across
Ray Serve deployment handles and the table is the only place a status code is chosen.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorKind(enum.Enum):
    """Each kind maps to exactly one HTTP status and one OpenAI error ``type``."""

    # (status, OpenAI type, name): the name keeps kinds that share a status distinct members.
    INVALID_REQUEST = (400, "invalid_request_error", "invalid_request")
    UNSUPPORTED_PARAMETER = (400, "invalid_request_error", "unsupported_parameter")
    CONTEXT_LENGTH = (400, "invalid_request_error", "context_length")
    AUTHENTICATION = (401, "authentication_error", "authentication")
    PERMISSION = (403, "permission_error", "permission")
    NOT_FOUND = (404, "invalid_request_error", "not_found")
    METHOD_NOT_ALLOWED = (405, "invalid_request_error", "method_not_allowed")
    PAYLOAD_TOO_LARGE = (413, "invalid_request_error", "payload_too_large")
    RATE_LIMITED = (429, "rate_limit_error", "rate_limited")  # a model's queue is full
    # an API key's own limits (deployments/ratelimit.py), with the types OpenAI sends for them
    RATE_LIMIT_REQUESTS = (429, "requests", "rate_limit_requests")
    RATE_LIMIT_TOKENS = (429, "tokens", "rate_limit_tokens")
    INTERNAL = (500, "server_error", "internal")
    UNAVAILABLE = (503, "service_unavailable_error", "unavailable")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def type(self) -> str:
        return self.value[1]


# OpenAI's own `code` values for the kinds that have one.
_DEFAULT_CODES = {
    ErrorKind.UNSUPPORTED_PARAMETER: "unsupported_parameter",
    ErrorKind.CONTEXT_LENGTH: "context_length_exceeded",
    ErrorKind.AUTHENTICATION: "invalid_api_key",
    ErrorKind.NOT_FOUND: "not_found",
    ErrorKind.RATE_LIMITED: "rate_limit_exceeded",
    ErrorKind.RATE_LIMIT_REQUESTS: "rate_limit_exceeded",
    ErrorKind.RATE_LIMIT_TOKENS: "rate_limit_exceeded",
}


class APIError(Exception):
    """A failure that is reported to the client as an OpenAI error body.

    ``param`` names the request field at fault (``messages[0].content``), ``code`` is OpenAI's
    machine-readable code, ``retry_after`` (seconds) becomes a ``Retry-After`` header.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code if code is not None else _DEFAULT_CODES.get(kind)
        self.retry_after = retry_after

    # Exceptions cross Ray process boundaries by pickling; keep the keyword fields.
    def __reduce__(self):
        return (_rebuild, (self.kind.name, self.message, self.param, self.code, self.retry_after))

    @property
    def status(self) -> int:
        return self.kind.status

    def body(self) -> dict[str, Any]:
        """The OpenAI error body, ``{"error": {message, type, param, code}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}

    def __repr__(self) -> str:
        return f"APIError({self.kind.name}, {self.message!r}, param={self.param!r})"


def _rebuild(kind: str, message: str, param, code, retry_after) -> APIError:
    return APIError(ErrorKind[kind], message, param=param, code=code, retry_after=retry_after)


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(ErrorKind.INVALID_REQUEST, message, param=param, code=code)


def not_a_json_object(what: str = "request body") -> APIError:
    """A body (or a batch file's line) that is missing or is not a JSON object."""
    return invalid(f"The {what} must be a JSON object.", None, "invalid_json")


def unsupported(param: str, detail: str = "") -> APIError:
    message = f"Parameter '{param}' is not supported by this server"
    message += f": {detail}" if detail else "."
    return APIError(ErrorKind.UNSUPPORTED_PARAMETER, message, param=param)


def model_not_found(model: str) -> APIError:
    return APIError(
        ErrorKind.NOT_FOUND,
        f"The model '{model}' does not exist. GET /v1/models lists the models served here.",
        param="model",
        code="model_not_found",
    )


def internal(message: str = "The server had an error while processing your request.") -> APIError:
    return APIError(ErrorKind.INTERNAL, message)


def unavailable(message: str, retry_after: int = 5) -> APIError:
    return APIError(ErrorKind.UNAVAILABLE, message, retry_after=retry_after)
