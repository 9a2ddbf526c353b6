"""The output processor: a batch's logits in, each sequence's next token and client-visible output out.

Owns, per sequence: its logits processors (applied before sampling), token choice (through
`serve/sampling.py`), end of sequence (end-of-turn token, stop strings, `max_tokens`), incremental
detokenisation (`serve/detok.py`) and log-probabilities. Does not own the model forward
(`serve/runner.py`) or which sequences run (`serve/scheduler.py`).

Logits processors are the extension point for constrained or biased decoding (logit_bias, grammar
constraints): `GenerationRequest.logits_processors` holds factories; each choice gets its own
instances (a grammar matcher keeps per-sequence state) and they are called in order on that
choice's row of logits, with the tokens it generated so far, before penalties, temperature and
top_p. Reported log-probabilities are those of the model's raw distribution, before processors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from tunegate.serve.detok import IncrementalText, TokenBytes
from tunegate.serve.engine import ChoiceOutput, LogitsProcessor, SamplingParams, TokenLogprob
from tunegate.serve.sampling import logprobs_of, make_generator, next_tokens


@dataclass(eq=False)
class SequenceState:
    """What the output processor keeps for one sequence (one choice of one request)."""

    index: int  # the choice index
    params: SamplingParams
    generator: torch.Generator
    text: IncrementalText
    processors: list[LogitsProcessor] = field(default_factory=list)
    output: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def last(self) -> int:
        return self.output[-1]


class OutputProcessor:
    """Turns a batch's logits into one `ChoiceOutput` (or None) per sequence (see module docstring)."""

    def __init__(self, tokenizer, eos: set[int]):
        self.tokenizer = tokenizer
        self.eos = eos
        self.token_bytes = TokenBytes(tokenizer)
        self.sampling_s = 0.0

    def new_sequence(self, params: SamplingParams, index: int, processor_factories=()) -> SequenceState:
        return SequenceState(
            index,
            params,
            make_generator(params.seed, index),
            IncrementalText(self.tokenizer, params.stop),
            [make() for make in processor_factories],
        )

    def process(self, seqs: list[SequenceState], logits: torch.Tensor) -> list[ChoiceOutput | None]:
        """Choose the next token of every sequence (row i of `logits` [B, vocab] is `seqs[i]`) and
        return what each one's client should see now; a finished sequence has `finish_reason` set."""
        start = time.perf_counter()
        try:
            return self._process(seqs, logits)
        finally:
            self.sampling_s += time.perf_counter() - start

    def _process(self, seqs: list[SequenceState], logits: torch.Tensor) -> list[ChoiceOutput | None]:
        params = [s.params for s in seqs]
        tokens = next_tokens(
            self._apply_processors(seqs, logits), params, [s.generator for s in seqs], [s.output for s in seqs]
        )
        want = [i for i, p in enumerate(params) if p.logprobs]
        lps = dict(zip(want, logprobs_of(logits, want, tokens, [p.top_logprobs for p in params])))
        outputs: list[ChoiceOutput | None] = []
        for i, (s, tok) in enumerate(zip(seqs, tokens)):
            outputs.append(self._advance(s, tok, lps.get(i)))
        return outputs

    @staticmethod
    def _apply_processors(seqs: list[SequenceState], logits: torch.Tensor) -> torch.Tensor:
        if not any(s.processors for s in seqs):
            return logits
        logits = logits.clone()  # the raw logits stay intact for log-probabilities
        for i, s in enumerate(seqs):
            for proc in s.processors:
                logits[i] = proc(s.output, logits[i])
        return logits

    def _advance(self, s: SequenceState, tok: int, lp) -> ChoiceOutput | None:
        p = s.params
        s.output.append(tok)
        if tok in self.eos and not p.ignore_eos:
            text, logprobs = s.text.finish()
            s.finish_reason = "stop"
        else:
            text, logprobs = s.text.push(tok, self._logprob(tok, lp) if lp is not None else None)
            if s.text.stopped:
                s.finish_reason = "stop"
            elif len(s.output) >= p.max_tokens:
                rest, more = s.text.finish()
                text, logprobs, s.finish_reason = text + rest, logprobs + more, "length"
        if text or logprobs or s.finish_reason:
            return ChoiceOutput(s.index, text, logprobs, s.finish_reason, len(s.output))
        return None

    def _logprob(self, token: int, info) -> TokenLogprob:
        chosen, top = info
        text, raw = self.token_bytes(token)
        return TokenLogprob(text, raw, chosen, [(*self.token_bytes(t), v) for t, v in top])
