"""Validate responses against the official OpenAI spec's schemas.

The schemas come from ``tests/openai_spec/schemas.json``, the part of the official spec
(``openai-openapi.yaml``) the tests use, kept in the repository (``extract.py`` there writes it;
MIT licence, ``LICENSE.md``). A schema missing from it is an error, never a skipped check. The
spec is OpenAPI 3.1 with some 3.0-style ``nullable: true`` left in; those are rewritten to
JSON-Schema ``null`` unions before validating.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

SCHEMAS_PATH = Path(__file__).resolve().parent / "openai_spec" / "schemas.json"


@functools.lru_cache(maxsize=1)
def _schemas() -> dict[str, Any]:
    return _fix_nullable(json.loads(SCHEMAS_PATH.read_text())["schemas"])


def _fix_nullable(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _fix_nullable(v) for k, v in node.items()}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_fix_nullable(v) for v in node]
    return node


def validate(instance: Any, schema_name: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` matches ``#/components/schemas/<name>``."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    schemas = _schemas()
    if schema_name not in schemas:
        raise KeyError(f"{schema_name} is not in {SCHEMAS_PATH}: add it to ROOTS in tests/openai_spec/extract.py and run it")
    root = {"components": {"schemas": schemas}}
    registry = Registry().with_resource("urn:openai", Resource(contents=root, specification=DRAFT202012))
    schema = {"$ref": f"urn:openai#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema, registry=registry).validate(instance)
