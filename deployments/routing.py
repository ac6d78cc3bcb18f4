"""Which model a request names: the served models, their handles, and the caller's key.

A :class:`Router` maps ``model`` (an id or an alias) to a :class:`ModelRoute`, whose handle reaches
the model's server: a Ray Serve deployment handle (a model with a deployment of its own) or an
in-process one (a model co-located in the front, ``deployments/inprocess.py``); both have the
same interface (``handle.method.remote(...)``, ``.options(stream=True)``).
"""

from __future__ import annotations

from typing import Any, Callable

from deployments import protocol
from deployments.auth import Key
from deployments.errors import APIError, ErrorKind, invalid, model_not_found, unavailable

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


def adapter_cards(card: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat model's LoRA adapters, each a model of its own for clients, served by its base."""
    return [
        protocol.model_card(
            name, card["created"], card["owned_by"], parent=card["id"], engine=card.get("engine"),
            capabilities=card.get("capabilities"), context_length=card.get("context_length"),
        )
        for name in card.get("lora_adapters", [])
    ]
