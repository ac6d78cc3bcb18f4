"""In-process baselines, each run in a fresh process by ``benchmarks.run``: no server, no HTTP."""

from __future__ import annotations

import json
import time

from benchmarks.load import prompts


def _chat_ids(tokenizer, n: int) -> list[list[int]]:
    out = []
    for p in prompts(n, seed=n):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True)
        out.append(list(ids["input_ids"]))
    return out


def vllm_offline(path: str, n: int, max_tokens: int, dtype: str) -> None:
    """vLLM's ``LLM.generate`` on n prompts at once (its best case: one big batch)."""
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=path, dtype=dtype, max_model_len=2048, enforce_eager=True, max_num_seqs=64)
    ids = _chat_ids(llm.get_tokenizer(), n)
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids[:2]], params)  # warm up
    start = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], params)
    wall = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print("RESULT " + json.dumps({"prompts": n, "tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1)}))


def hf_static(path: str, n: int, max_tokens: int, dtype: str) -> None:
    """transformers ``generate`` on n prompts as one left-padded static batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    ids = _chat_ids(tok, n)
    width = max(map(len, ids))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    model.generate(input_ids=input_ids[:2], attention_mask=mask[:2], max_new_tokens=4, do_sample=False)
    start = time.perf_counter()
    out = model.generate(
        input_ids=input_ids, attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False
    )
    wall = time.perf_counter() - start
    tokens = (out.shape[1] - width) * n
    print("RESULT " + json.dumps({"prompts": n, "tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1)}))
