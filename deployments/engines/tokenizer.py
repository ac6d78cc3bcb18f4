"""Tokenizers as the model server sees them: encode, decode, chat prompt, special ids.

``HFTokenizer`` wraps a Hugging Face tokenizer (used with both engines, so chat templates and
token counts are identical whichever engine runs). ``ByteTokenizer`` is a tiny deterministic
stand-in for the fake engine used in fast tests: one token per UTF-8 byte.
"""

from __future__ import annotations

from typing import Any, Protocol


class Tokenizer(Protocol):
    eos_ids: list[int]
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    supports_tools: bool

    def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]: ...

    def token_text(self, token_id: int) -> str: ...


class HFTokenizer:
    def __init__(self, tok) -> None:
        self._tok = tok
        eos = tok.eos_token_id
        self.eos_ids = [eos] if eos is not None else []
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos or 0)
        if tok.chat_template is None:
            raise ValueError("the tokenizer has no chat template; serve it for /v1/completions only")

    @classmethod
    def load(cls, path: str) -> "HFTokenizer":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path))

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def hf(self):
        """The wrapped Hugging Face tokenizer."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    @property
    def supports_tools(self) -> bool:
        """Whether the chat template renders tool definitions itself."""
        return "tools" in (self._tok.chat_template or "")

    def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        extra = {"tools": tools} if tools else {}
        out = self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True, **extra)
        return list(out["input_ids"])

    def token_text(self, token_id: int) -> str:
        return self._tok.decode([token_id], skip_special_tokens=False)


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 0-255), 256 = EOS; chat prompts as ``role: text`` lines."""

    EOS = 256
    eos_ids = [EOS]
    pad_id = EOS
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    supports_tools = False

    def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.encode(text)

    def token_text(self, token_id: int) -> str:
        return self.decode([token_id])
