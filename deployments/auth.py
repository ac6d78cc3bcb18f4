"""API keys: who may call the server, and which models each key may use.

Keys come from the environment of the ingress replicas, never from the YAML (which is often
committed): ``API_KEYS`` (comma-separated) and/or ``API_KEYS_FILE``, a file with one key per
line, optionally followed by the models it may use::

    # comments and blank lines are ignored
    sk-team-a                       # any model
    sk-embed-only  all-minilm-l6-v2 # only these models (ids or aliases, comma-separated)

No key configured means the server is open, and the ingress says so at start-up. Keys are
compared in constant time and never logged.
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


class KeyStore:
    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys

    @property
    def open(self) -> bool:
        return not self.keys

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "KeyStore":
        env = os.environ if environ is None else environ
        keys = [Key(k.strip().encode(), None) for k in env.get("API_KEYS", "").split(",") if k.strip()]
        path = env.get("API_KEYS_FILE")
        if path:
            keys += parse_key_file(Path(path).read_text())
        store = cls(keys)
        if store.open:
            logger.warning("No API keys configured (API_KEYS / API_KEYS_FILE): the API is open to anyone who can reach it")
        else:
            logger.info("API keys required: %d key(s) loaded", len(keys))
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


def parse_key_file(text: str) -> list[Key]:
    keys = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        secret, _, models = line.partition(" ")
        allowed = frozenset(m.strip() for m in models.replace(" ", ",").split(",") if m.strip())
        keys.append(Key(secret.encode(), allowed or None))
    return keys


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
