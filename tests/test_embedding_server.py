"""The embedding server with the real MiniLM, in-process: tokenising on the event loop and
encoding in the batcher's thread do not interfere."""

from __future__ import annotations

import asyncio

from deployments.protocol import EmbeddingRequest


async def test_counting_tokens_leaves_the_encoders_padding_alone(servers):
    _, _, embedder = servers
    backend = embedder.model.tokenizer.backend_tokenizer
    backend.enable_padding(pad_id=0, pad_token="[PAD]")  # as an encode in progress has it
    try:
        embedder.tokenizer(["what the event loop counts"], add_special_tokens=True)
        assert backend.padding is not None
    finally:
        backend.no_padding()


async def test_many_single_sentences_at_once_all_get_vectors(servers):
    _, _, embedder = servers
    texts = [" ".join(["word"] * (1 + i % 40)) + f" {i}" for i in range(256)]
    results = await asyncio.gather(
        *(embedder.embed(EmbeddingRequest(model="minilm", input=t)) for t in texts), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert all(len(r["data"]) == 1 and len(r["data"][0]["embedding"]) == 384 for r in results)
