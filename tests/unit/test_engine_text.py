"""Token choice and text deltas: penalties, top_p, seeded generators, incremental decoding of
multi-byte characters, stop strings split across tokens, log-probabilities kept with their text."""

from __future__ import annotations

import torch

from tunegate.serve.detok import IncrementalText, TokenBytes
from tunegate.serve.engine import SamplingParams, TokenLogprob
from tunegate.serve.sampling import apply_penalties, logprobs_of, make_generator, next_tokens, sample_row

TEXT = "naïve café 🙂 日本語 ok, über straße"


def _push_all(tokenizer, ids, stop=()):
    inc = IncrementalText(tokenizer, tuple(stop))
    deltas = []
    for t in ids:
        d, _ = inc.push(t)
        deltas.append(d)
        if inc.stopped:
            break
    if not inc.stopped:
        deltas.append(inc.finish()[0])
    return inc, deltas


def test_incremental_decoding_never_splits_a_character(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    # Some tokens are partial UTF-8 sequences on their own, so this exercises the hold-back.
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids)
    _, deltas = _push_all(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids) == TEXT
    assert not any("\ufffd" in d for d in deltas)


def test_stop_string_split_across_tokens_is_cut_exactly_and_never_sent(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    for stop in ["é 🙂 日", "ok,", "straße", "zzz-never"]:
        inc, deltas = _push_all(tokenizer, ids, [stop, "another stop"])
        sent = "".join(deltas)
        cut = TEXT.find(stop)
        assert sent == (TEXT[:cut] if cut >= 0 else TEXT)
        assert inc.stopped == (cut >= 0)


def test_logprobs_travel_with_the_text_they_produced(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    inc = IncrementalText(tokenizer, ("ok,",))
    sent_text, sent_lps = "", []
    for i, t in enumerate(ids):
        text, lps = inc.push(t, TokenLogprob(str(i), [], -float(i)))
        sent_text += text
        sent_lps += lps
        if inc.stopped:
            break
        # A token's log-probability is never sent before the text it produced.
        assert len(tokenizer.decode(ids[: len(sent_lps)])) <= len(sent_text) or "\ufffd" in tokenizer.decode(
            ids[: len(sent_lps)]
        )
    n_cut = len(tokenizer(TEXT[: TEXT.find("ok,")], add_special_tokens=False)["input_ids"])
    assert [lp.token for lp in sent_lps] == [str(i) for i in range(len(sent_lps))]
    assert n_cut <= len(sent_lps) <= n_cut + 1  # the token that began "ok," may straddle the cut


def test_token_bytes_are_exact_utf8(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    tb = TokenBytes(tokenizer)
    assert bytes(b for t in ids for b in tb(t)[1]).decode("utf-8") == TEXT
    assert tb(tokenizer.eos_token_id)[0] == tokenizer.eos_token


def test_penalties_follow_openais_formula():
    logits = torch.zeros(6)
    out = apply_penalties(logits, [1, 1, 3], SamplingParams(max_tokens=1, presence_penalty=0.5, frequency_penalty=0.25))
    assert out.tolist() == [0, -(2 * 0.25 + 0.5), 0, -(0.25 + 0.5), 0, 0]
    assert apply_penalties(logits, [1], SamplingParams(max_tokens=1)) is logits


def test_greedy_top_p_and_seeded_sampling():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    greedy = SamplingParams(max_tokens=1, temperature=0)
    narrow = SamplingParams(max_tokens=1, temperature=1.5, top_p=1e-6)  # only the top token survives
    free = SamplingParams(max_tokens=1, temperature=1.0, seed=7)
    gens = [make_generator(None, 0), make_generator(None, 1), make_generator(7, 0)]
    toks = next_tokens(logits, [greedy, narrow, free], gens, [[], [], []])
    assert toks[0] == int(logits[0].argmax()) and toks[1] == int(logits[1].argmax())
    draws = [[sample_row(logits[2], free, g) for _ in range(20)] for g in (make_generator(7, 0), make_generator(7, 0))]
    assert draws[0] == draws[1]  # same seed, same choice index: same tokens
    assert draws[0] != [sample_row(logits[2], free, make_generator(7, 1)) for _ in range(20)]


def test_logprobs_of_chosen_and_top():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    (lp0, top0), (lp1, top1) = logprobs_of(logits, [0, 1], [3, 1], [2, 0])
    ref = torch.log_softmax(logits, -1)
    assert abs(lp0 - ref[0, 3].item()) < 1e-6 and abs(lp1 - ref[1, 1].item()) < 1e-6
    assert [t for t, _ in top0] == [3, 2] and top1 == []
