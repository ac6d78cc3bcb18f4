"""Write the part of the official OpenAI spec the tests validate against: ``schemas.json``.

The tests check response shapes against OpenAI's own schemas (``tests/spec.py``). The whole
spec (~3 MB) is not needed for that; this keeps the schemas named in ``ROOTS`` and every schema
they reference, as they are in the spec. Run it again, with the official spec's path, after
adding a name to ``ROOTS``::

    python -m tests.openai_spec.extract path/to/openai-openapi.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "schemas.json"

ROOTS = [
    "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "CreateCompletionResponse",
    "CreateEmbeddingResponse", "ErrorResponse", "ListModelsResponse", "Model",
    "Response", "ResponseCreatedEvent", "ResponseInProgressEvent", "ResponseCompletedEvent",
    "ResponseIncompleteEvent", "ResponseOutputItemAddedEvent", "ResponseOutputItemDoneEvent",
    "ResponseContentPartAddedEvent", "ResponseContentPartDoneEvent", "ResponseTextDeltaEvent",
    "ResponseTextDoneEvent", "ResponseFunctionCallArgumentsDeltaEvent", "ResponseFunctionCallArgumentsDoneEvent",
    "CreateTranscriptionResponseJson", "CreateTranscriptionResponseVerboseJson",
    "CreateTranslationResponseJson", "CreateTranslationResponseVerboseJson",
    "TranscriptTextDeltaEvent", "TranscriptTextDoneEvent",
    "OpenAIFile", "ListFilesResponse", "DeleteFileResponse", "Batch", "ListBatchesResponse", "CreateBatchRequest",
    "CreateFileRequest",
]

PREFIX = "#/components/schemas/"


def closure(schemas: dict[str, Any], roots: list[str]) -> dict[str, Any]:
    """``roots`` and every schema reachable from them through ``$ref``."""
    kept: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        kept[name] = schemas[name]
        todo.extend(_refs(schemas[name]))
    return dict(sorted(kept.items()))


def _refs(node: Any):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(PREFIX):
            yield ref[len(PREFIX):]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def main(spec_path: str) -> None:
    import yaml

    spec = yaml.load(Path(spec_path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    document = {
        "source": "components.schemas of the official OpenAI API spec (openai-openapi.yaml), MIT licence; see LICENSE.md here",
        "spec_version": spec["info"]["version"],
        "schemas": closure(spec["components"]["schemas"], ROOTS),
    }
    OUT.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    print(f"{OUT}: {len(document['schemas'])} schemas")


if __name__ == "__main__":
    main(sys.argv[1])
