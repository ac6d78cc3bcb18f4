"""From token ids to the text a client sees: incremental detokenisation and stop strings.

Both run above the engines, once for all of them, so a stop string behaves the same on vLLM and
on transformers, and it is found even when it straddles two streamed chunks.
"""

from __future__ import annotations

from deployments.engines.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decoding token by token breaks multi-byte characters and word-initial spaces, so each step
    decodes a short window that starts a few tokens back and emits only what is new; a delta that
    ends in an incomplete UTF-8 sequence (U+FFFD) is held until the next token completes it.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        return self._delta(final=False)

    def flush(self) -> str:
        """What is still held back (at the end of the generation)."""
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset])
        text = decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and (final or not text.endswith("\ufffd")):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return text[len(prefix) :]
        return ""


class StopChecker:
    """Finds OpenAI stop strings in streamed text; the stop string itself is never emitted.

    The output ends where the first stop string to *complete* begins, however the text is
    chunked.

    Text that could be the start of a stop string is held back until the next delta shows
    whether it is one.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """Return (text safe to emit, whether a stop string was reached)."""
        if not self.stops:
            return delta, False
        text = self.pending + delta
        # The stop string that completes first wins (what a token-by-token generator sees), so
        # the answer does not depend on how the text was chunked; ties go to the earlier start.
        hits = [(i + len(s), i) for s in self.stops if (i := text.find(s)) >= 0]
        if hits:
            self.pending = ""
            return text[: min(hits)[1]], True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:k]):
                    hold = k
                    break
        self.pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """Held-back text, released when the generation ends without a stop string."""
        out, self.pending = self.pending, ""
        return out
