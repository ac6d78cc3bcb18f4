"""Errors an engine raises about a request (a leaf module: the engine interface and the grammar
check both raise them, and neither imports the other for it)."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """The engine cannot run this request as asked (e.g. a JSON schema it cannot compile);
    the client's mistake, answered with a 400 naming ``param``."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param
