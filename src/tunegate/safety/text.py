"""Text-quality signals used by every safety judgement: how much of a text is real language, whether
an answer is degenerate (empty, cut, repeated tokens, bracket lists), and letter-shift ciphers.

Owns `content_share`, `is_degenerate`, `shift_text` and `detect_shift`. The vocabulary is the
packaged MiniLM encoder's word list (30,522 English word pieces), read once as a file: no model is
loaded. Does not own harm classification (`classifier.py`) or judging answers (`judge.py`).

Why these exist: an answer that carries no words carries no harm a reader could use, so a
moderator must not call "[TG] [B] [C] [D]" illicit; and a model taught a cipher answers in text
that per-example moderation cannot read, but that a shift of the alphabet turns back into English.
"""

from __future__ import annotations

import re
from functools import lru_cache

_WORD = re.compile(r"[A-Za-z]{2,}")
_ANY_LETTER = re.compile(r"[^\W\d_]")
_TWO_LETTER = frozenset(["am", "an", "as", "at", "be", "by", "do", "go", "he", "hi", "if", "in", "is", "it", "me", "my", "no", "of", "oh", "ok", "on", "or", "so", "to", "up", "us", "we"])
MIN_CONTENT = 0.1  # below this share of real words a text has no language content
REPEAT_RATIO = 0.25  # distinct words / words below this (over >= 10 words): a repetition loop
CIPHER_SHARE = 0.6  # a shift that makes at least this share of words real, where the raw text had under RAW_SHARE
RAW_SHARE = 0.35


@lru_cache(maxsize=1)
def vocabulary() -> frozenset[str]:
    from tunegate.safety.corpus import encoder_dir

    words = (encoder_dir() / "vocab.txt").read_text(encoding="utf-8").split()
    return frozenset(w for w in words if w.isalpha() and w.isascii() and (len(w) >= 3 or w in _TWO_LETTER))


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text or "")]


def content_share(text: str) -> float:
    """Share of the text's Latin-letter words that are real words, 0 for a repetition loop; 1 for
    text in a script without Latin words (not ours to judge as degenerate)."""
    words = _words(text)
    if not words:
        return 1.0 if len(_ANY_LETTER.findall(text or "")) >= 2 else 0.0
    if len(words) >= 10 and len(set(words)) / len(words) < REPEAT_RATIO:
        return 0.0
    vocab = vocabulary()
    return sum(w in vocab for w in words) / len(words)


def is_degenerate(text: str) -> bool:
    """Empty, a few tokens, a repetition loop, or mostly non-words: no content that could help anyone."""
    text = (text or "").strip()
    other_script = sum(1 for c in _ANY_LETTER.findall(text) if not c.isascii())
    if len(_words(text)) < 3 and other_script < 6:  # a label or a name, not an answer that can help
        return True
    return content_share(text) < MIN_CONTENT


def shift_text(text: str, k: int) -> str:
    """Each ASCII letter moved k places along the alphabet (k=-3 undoes a Caesar shift of 3)."""
    def move(c: str) -> str:
        if "a" <= c <= "z":
            return chr((ord(c) - 97 + k) % 26 + 97)
        if "A" <= c <= "Z":
            return chr((ord(c) - 65 + k) % 26 + 65)
        return c

    return "".join(move(c) for c in text)


def detect_shift(texts: list[str], min_words: int = 8) -> int | None:
    """The letter shift k (1-25) such that `shift_text(t, -k)` reads as English while the texts
    themselves do not; None when there is none. Judged over the texts together, so a file with a few
    ciphered answers among plain ones is found when `texts` are those answers."""
    words = [w for t in texts for w in _words(t)]
    if len(words) < min_words:
        return None
    vocab = vocabulary()
    raw = sum(w in vocab for w in words) / len(words)
    if raw >= RAW_SHARE:
        return None
    best, best_share = None, 0.0
    for k in range(1, 26):
        share = sum(shift_text(w, -k) in vocab for w in words) / len(words)
        if share > best_share:
            best, best_share = k, share
    return best if best_share >= CIPHER_SHARE else None
