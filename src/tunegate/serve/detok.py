"""Turning one sequence's generated tokens into the text deltas a client sees.

Owns incremental decoding (never emitting half of a multi-byte character), stop strings (cut
exactly, never emitted, even when split across tokens: text that could still begin a stop string is
held back) and keeping each token's log-probability with the text it produced. Does not own
sampling or batching.
"""

from __future__ import annotations

from functools import lru_cache

from tunegate.serve.engine import TokenLogprob


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


class TokenBytes:
    """The exact UTF-8 bytes of each token id (OpenAI's `bytes` in log-probabilities)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self.cache.get(token_id)
        if hit is None:
            hit = self.cache[token_id] = self._compute(token_id)
        return hit

    def _compute(self, token_id: int) -> tuple[str, list[int]]:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        decoder = _byte_decoder()
        if token_id not in self.special and piece and all(c in decoder for c in piece):
            raw = bytes(decoder[c] for c in piece)  # byte-level BPE (GPT-2, Llama 3, SmolLM)
        else:
            raw = self.tokenizer.decode([token_id]).encode("utf-8")
        return raw.decode("utf-8", errors="replace"), list(raw)


class IncrementalText:
    """Text of one sequence as tokens arrive; `push` returns what may be sent now."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""  # everything decoded so far (cut at a stop string once one is found)
        self.sent = 0  # characters of `text` already sent
        self.stopped = False
        self.pending: list[tuple[int, int, TokenLogprob]] = []  # (start, end) chars of each token's text

    def _decode_new(self, token_id: int) -> str:
        # Decode a short window of previous tokens and the new one, and keep the difference: tokenizers
        # that drop a leading space at the start of a decode stay right, and an incomplete UTF-8
        # sequence (shown as U+FFFD) waits for the tokens that complete it.
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = self.tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return full[len(prefix) :]

    def push(self, token_id: int, logprob: TokenLogprob | None = None) -> tuple[str, list[TokenLogprob]]:
        """Add a generated token; returns (text to send, log-probabilities to send with it)."""
        start = len(self.text)
        self.text += self._decode_new(token_id)
        if logprob is not None:
            self.pending.append((start, len(self.text), logprob))
        if self.stop:
            hit = self._find_stop(start)
            if hit is not None:
                self.text = self.text[:hit]
                self.stopped = True
                return self._release(len(self.text), final=True)
        return self._release(len(self.text) - self._held_back())

    def finish(self) -> tuple[str, list[TokenLogprob]]:
        """Everything still held back (the sequence ended without a stop string)."""
        return self._release(len(self.text), final=True)

    def _find_stop(self, new_from: int) -> int | None:
        longest = max(len(s) for s in self.stop)
        lo = max(0, new_from - longest + 1)
        hits = [i for i in (self.text.find(s, lo) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        # The longest tail of the text that is the beginning of some stop string.
        held = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _release(self, upto: int, final: bool = False) -> tuple[str, list[TokenLogprob]]:
        upto = max(upto, self.sent)
        delta = self.text[self.sent : upto]
        self.sent = upto
        out: list[TokenLogprob] = []
        keep = []
        for start, end, lp in self.pending:
            if end <= upto and (start < upto or end == start):
                out.append(lp)
            elif final and start < upto:
                out.append(lp)  # a token whose text was cut by the stop string
            elif not final:
                keep.append((start, end, lp))
        self.pending = keep
        return delta, out
