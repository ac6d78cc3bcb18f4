"""The part of the official OpenAI spec kept in the repository is whole: the tests need no file
outside it (tests/openai_spec/)."""

from __future__ import annotations

import json

from tests.openai_spec.extract import ROOTS, _refs
from tests.spec import SCHEMAS_PATH


def test_every_root_and_every_reference_is_in_the_repository():
    schemas = json.loads(SCHEMAS_PATH.read_text())["schemas"]
    assert set(ROOTS) <= set(schemas)
    dangling = {ref for schema in schemas.values() for ref in _refs(schema)} - set(schemas)
    assert not dangling, f"references to schemas not kept: {sorted(dangling)}"


def test_the_licence_of_the_extract_is_kept_with_it():
    document = json.loads(SCHEMAS_PATH.read_text())
    assert "MIT" in document["source"]
    assert "Copyright (c) OpenAI" in (SCHEMAS_PATH.parent / "LICENSE.md").read_text()
