"""API keys: who may call the server, and which models each key may use.

Keys come from the environment of the ingress replicas, never from the YAML (which is often
committed): ``API_KEYS`` (comma-separated) and/or ``API_KEYS_FILE``, a file with one key per
line, optionally followed by the models it may use (``*``: every model), then optionally by its
rate limits, ``rpm=N`` (requests per minute) and ``tpm=N`` (tokens per minute)::

    # comments and blank lines are ignored
    sk-team-a                       # any model
    sk-embed-only  all-minilm-l6-v2 # only these models (ids or aliases, comma-separated)
    sk-team-b  *  rpm=60 tpm=20000  # every model, at most 60 requests and 20000 tokens a minute

A line the parser cannot read (a limit that is not ``rpm``/``tpm``, not a positive integer, given
twice, or a model after the limits) is a start-up error naming its line; the key itself is never
part of the message. No key configured means the server is open, and the ingress says so at
start-up. Keys are compared in constant time and never logged. Keys from ``API_KEYS`` have no
rate limits; ``deployments/ratelimit.py`` enforces them.
"""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Key:
    secret: bytes
    models: frozenset[str] | None  # None: every model
    rpm: int | None = None  # requests per minute; None: no limit
    tpm: int | None = None  # tokens (prompt + completion) per minute; None: no limit

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def __repr__(self) -> str:  # never the secret
        return f"Key(models={sorted(self.models) if self.models else '*'}, rpm={self.rpm}, tpm={self.tpm})"


class KeyStore:
    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys

    @property
    def open(self) -> bool:
        return not self.keys

    @property
    def limited(self) -> bool:
        """Some key has rate limits."""
        return any(key.limited for key in self.keys)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "KeyStore":
        env = os.environ if environ is None else environ
        keys = [Key(k.strip().encode(), None) for k in env.get("API_KEYS", "").split(",") if k.strip()]
        path = env.get("API_KEYS_FILE")
        if path:
            keys += parse_key_file(Path(path).read_text(), f"API_KEYS_FILE {path}")
        store = cls(keys)
        if store.open:
            logger.warning("No API keys configured (API_KEYS / API_KEYS_FILE): the API is open to anyone who can reach it")
        else:
            limited = sum(k.limited for k in keys)
            logger.info("API keys required: %d key(s) loaded, %d with rate limits", len(keys), limited)
        return store

    def lookup(self, presented: str | None) -> Key | None:
        """The key matching ``presented``, comparing against every key in constant time."""
        if presented is None:
            return None
        candidate = presented.encode()
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.secret, candidate):
                found = key
        return found


LIMITS = ("rpm", "tpm")


class KeyFileError(ValueError):
    """A line of the key file that cannot be read: a start-up error, never skipped."""


def parse_key_file(text: str, source: str = "API_KEYS_FILE") -> list[Key]:
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split(None, 1)
        if not words:
            continue
        secret, rest = words[0], words[1] if len(words) > 1 else ""
        where = f"{source}, line {number}"
        models: set[str] = set()
        limits: dict[str, int] = {}
        for word in rest.replace(",", " ").split():
            name, eq, value = word.partition("=")
            if not eq:
                if limits:
                    raise KeyFileError(f"{where}: models come before the limits (found {word!r} after {', '.join(limits)})")
                models.add(word)
                continue
            if name not in LIMITS:
                raise KeyFileError(f"{where}: unknown setting {name!r} (a key's limits are rpm=N and tpm=N)")
            if name in limits:
                raise KeyFileError(f"{where}: {name} is given twice")
            if not (value.isascii() and value.isdigit() and int(value) > 0):
                raise KeyFileError(f"{where}: {name} must be a positive integer, not {value!r}")
            limits[name] = int(value)
        every = not models or "*" in models  # '*' (or no models named): every model
        keys.append(Key(secret.encode(), None if every else frozenset(models), limits.get("rpm"), limits.get("tpm")))
    return keys


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
