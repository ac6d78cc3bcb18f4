"""Validate responses against the official OpenAI spec in ``../shared/openai-openapi.yaml``.

The spec is OpenAPI 3.1 with some 3.0-style ``nullable: true`` left in; those are rewritten to
JSON-Schema ``null`` unions before validating. Tests that need the spec skip, saying why, when
the file is absent.

The audio schemas (``tests/openai_audio_schemas.json``: the same spec's, MIT licence, copied
with their references) are read from that file instead, so the audio tests need no ../shared.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "openai-openapi.yaml"
BUNDLED_PATH = Path(__file__).resolve().parent / "openai_audio_schemas.json"


@functools.lru_cache(maxsize=1)
def _bundled() -> dict[str, Any]:
    import json

    return _fix_nullable(json.loads(BUNDLED_PATH.read_text())["schemas"])


@functools.lru_cache(maxsize=1)
def _schemas() -> dict[str, Any]:
    import yaml

    spec = yaml.load(SPEC_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return _fix_nullable(spec["components"]["schemas"])


def _fix_nullable(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _fix_nullable(v) for k, v in node.items()}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_fix_nullable(v) for v in node]
    return node


def require_spec() -> None:
    if not SPEC_PATH.exists():
        pytest.skip(f"OpenAI spec not found at {SPEC_PATH}; schema checks need ../shared/openai-openapi.yaml")


def validate(instance: Any, schema_name: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` matches ``#/components/schemas/<name>``."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    if schema_name in _bundled():
        schemas = _bundled()
    else:
        require_spec()
        schemas = _schemas()
    root = {"components": {"schemas": schemas}}
    registry = Registry().with_resource("urn:openai", Resource(contents=root, specification=DRAFT202012))
    schema = {"$ref": f"urn:openai#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema, registry=registry).validate(instance)
