"""Text similarity in [0, 1] for the `text_similarity` grader, each metric from a well-kept library.

fuzzy_match: rapidfuzz's WRatio on normalised text; bleu and gleu: NLTK's sentence scores (BLEU with
smoothing so a short answer without 4-gram overlap does not score exactly 0); rouge_1..5 and rouge_l:
Google's rouge-score F-measure; cosine: the packaged all-MiniLM-L6-v2 sentence encoder (the one the
moderation classifier uses), negative cosines counted as 0. meteor needs WordNet data that no
installed package ships, so it is refused at validation with that reason.
"""

from __future__ import annotations

import re
from functools import lru_cache

from tunegate.threads import run_sized

UNSUPPORTED = {
    "meteor": "`meteor` needs the WordNet corpus, which this offline server does not ship; use `rouge_l`, "
    "`bleu`, `fuzzy_match` or `cosine`."
}
_TOKEN = re.compile(r"\w+|[^\w\s]")


def _tokens(text: str) -> list[str]:
    # A regex tokenizer: NLTK's word_tokenize needs the punkt data, which is not shipped offline.
    return _TOKEN.findall(text.lower())


@lru_cache(maxsize=8)
def _rouge(kind: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=False)


def similarity(metric: str, text: str, reference: str, embed=None) -> float:
    """The `metric` similarity of `text` to `reference`; `embed(texts) -> unit vectors` for cosine."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz, utils

        return fuzz.WRatio(text, reference, processor=utils.default_process) / 100.0
    if metric in ("bleu", "gleu"):
        hyp, ref = _tokens(text), _tokens(reference)
        if not hyp or not ref:
            return float(hyp == ref)
        if metric == "gleu":
            from nltk.translate.gleu_score import sentence_gleu

            return float(sentence_gleu([ref], hyp))
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

        return float(sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method1))
    if metric.startswith("rouge_"):
        kind = "rougeL" if metric == "rouge_l" else "rouge" + metric.removeprefix("rouge_")
        return float(_rouge(kind).score(reference, text)[kind].fmeasure)
    if metric == "cosine":
        if embed is None:
            from tunegate.safety.classifier import shared_encoder

            embed = shared_encoder().embed
        a, b = run_sized(2, embed, [text, reference])  # one thread, in place (tunegate/threads.py)
        return max(0.0, min(1.0, float((a * b).sum())))
    raise ValueError(UNSUPPORTED.get(metric, f"unknown metric {metric}"))
