"""In-process stand-ins for Ray Serve deployment handles, for the fast HTTP tests.

They expose the slice of ``DeploymentHandle`` that the ingress uses -- ``handle.method.remote(...)``
awaitable, ``handle.options(stream=True).method.remote(...)`` async-iterable -- and pickle the
arguments and results on the way, as Ray would, so nothing that cannot cross a process boundary
slips through these tests.
"""

from __future__ import annotations

import pickle
from typing import Any

from deployments.inprocess import construct  # noqa: F401 - the tests build servers with it


class LocalHandle:
    def __init__(self, target: Any, stream: bool = False) -> None:
        self._target = target
        self._stream = stream

    def options(self, stream: bool = False, **_: Any) -> "LocalHandle":
        return LocalHandle(self._target, stream)

    def __getattr__(self, name: str) -> "_Method":
        return _Method(getattr(self._target, name), self._stream)


class _Method:
    def __init__(self, fn, stream: bool) -> None:
        self.fn = fn
        self.stream = stream

    def remote(self, *args: Any):
        args = pickle.loads(pickle.dumps(args))
        if self.stream:
            return self.fn(*args)
        return self._call(args)

    async def _call(self, args):
        try:
            result = self.fn(*args)
            if hasattr(result, "__await__"):
                result = await result
        except Exception as exc:
            raise pickle.loads(pickle.dumps(exc)) from None
        return pickle.loads(pickle.dumps(result))
