"""Token statistics against the real tokenizer and chat template, the auto epoch rule, exact
quantiles, and the ChatML fast path of catalog/template.py proven equal to the Jinja render."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

import tunegate.catalog.template as template_module
from tunegate.catalog.template import (
    _apply,
    chatml_default_system,
    normalize_messages,
    render,
    render_with_spans,
    tokenize_examples,
)
from tunegate.files.tokens import _distribution, auto_n_epochs
from tunegate.files.validate import validate_file

from .test_validate_cases import good, tool_example, write


def jinja_tokens(tokenizer, messages: list[dict]) -> int:
    """Independent count: the tokenizer's own Jinja render, tokenized as the model sees it."""
    text = tokenizer.apply_chat_template(normalize_messages(messages, mark_trained=False), tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def reply_tokens(tokenizer, messages: list[dict]) -> int:
    """Independent trained count: each trained reply's tokens plus its end-of-turn token. Exact for replies
    that start and end with a letter (ChatML puts a newline before and `<|im_end|>` after them)."""
    return sum(
        len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) + 1
        for m in messages
        if m["role"] == "assistant" and m.get("weight", 1) == 1
    )


def varied(i: int) -> dict:
    rng = random.Random(i)
    words = ["alpha", "beta", "gamma", "delta", "straße", "naïve", "数据", "emoji🙂", "x", "tokens"]
    turns = [{"role": "system", "content": "Answer briefly."}] if i % 3 else []
    for t in range(rng.randint(1, 4)):
        turns.append({"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(1, 30)))})
        reply = "Reply " + " ".join(rng.choices(words, k=rng.randint(1, 60))) + " end"
        turns.append({"role": "assistant", "content": reply, **({"weight": t % 2} if i % 2 else {})})
    return {"messages": turns}


def test_token_counts_equal_the_tokenizers_count_of_the_rendered_template(tmp_path, tokenizer):
    examples = [varied(i) for i in range(40)]
    report = validate_file(write(tmp_path / "d.jsonl", examples), tokenizer=tokenizer, context_length=8192)
    assert report.valid, report.errors
    totals = [jinja_tokens(tokenizer, e["messages"]) for e in examples]
    trained = [reply_tokens(tokenizer, e["messages"]) for e in examples]
    t = report.tokens
    assert t.n_examples == 40 and t.total_tokens == sum(totals) and t.trained_tokens == sum(trained)
    assert (t.per_example_total.min, t.per_example_total.max) == (min(totals), max(totals))
    assert (t.per_example_trained.min, t.per_example_trained.max) == (min(trained), max(trained))
    assert t.per_example_total.p50 == int(np.percentile(totals, 50, method="inverted_cdf"))
    assert t.n_truncated == 0 and t.n_without_trained_tokens == sum(x == 0 for x in trained)
    assert t.auto_n_epochs == auto_n_epochs(40) and t.estimated_trained_tokens == sum(trained) * auto_n_epochs(40)
    assert sum(b.count for b in t.histogram) == 40
    assert t.histogram[0].start == min(totals) and t.histogram[-1].end >= max(totals)


def test_tool_calls_count_as_the_trainer_renders_them(tmp_path, tokenizer):
    examples = [tool_example(i) for i in range(10)]
    report = validate_file(write(tmp_path / "t.jsonl", examples), tokenizer=tokenizer, context_length=8192)
    from tunegate.train.data import read_conversations

    conversations = read_conversations(write(tmp_path / "t.jsonl", examples))  # what the trainer trains on
    trainer = tokenize_examples(tokenizer, conversations)
    assert report.tokens.total_tokens == sum(len(x.input_ids) for x in trainer)
    assert report.tokens.trained_tokens == sum(x.n_trained for x in trainer)
    assert report.tokens.total_tokens == sum(jinja_tokens(tokenizer, c) for c in conversations)
    # The tool definitions are in the prompt, and the call is trained text in the project's convention.
    text = tokenizer.decode(trainer[3].input_ids)
    assert '"name": "get_weather", "description": "Current weather"' in text
    trained = tokenizer.decode([t for t, m in zip(trainer[3].input_ids, trainer[3].loss_mask) if m])
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "city 3"}}</tool_call>' in trained
    assert "sunny" not in trained and "You are welcome, traveller 3." in trained


def test_long_examples_are_flagged_and_only_kept_tokens_count(tmp_path, tokenizer):
    examples = [varied(i) for i in range(12)]
    trainer = tokenize_examples(tokenizer, [e["messages"] for e in examples])
    ctx = sorted(len(x.input_ids) for x in trainer)[6]  # about half are longer
    report = validate_file(write(tmp_path / "d.jsonl", examples), tokenizer=tokenizer, context_length=ctx)
    long_lines = [i + 1 for i, x in enumerate(trainer) if len(x.input_ids) > ctx]
    assert long_lines and report.valid
    assert [w.line for w in report.warnings if w.code == "example_truncated"] == long_lines
    assert report.tokens.n_truncated == len(long_lines)
    assert report.tokens.trained_tokens == sum(sum(x.loss_mask[:ctx]) for x in trainer)


def test_invalid_examples_are_not_counted(tmp_path, tokenizer):
    lines = [good(i) for i in range(10)] + ['{"messages": []}']
    report = validate_file(write(tmp_path / "d.jsonl", lines), tokenizer=tokenizer, context_length=8192)
    assert report.tokens.n_examples == 10 and report.n_examples == 11
    assert report.tokens.total_tokens == sum(jinja_tokens(tokenizer, good(i)["messages"]) for i in range(10))


def test_template_errors_name_the_line(tmp_path, tokenizer):
    # A template that refuses some conversations (many real ones check role order) is reported, not raised.
    strict = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' and 'forbidden' in m['content'] %}"
        "{{ raise_exception('no forbidden words') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    lines = [good(i) for i in range(10)] + [
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "a forbidden word"},
                {"role": "assistant", "content": "ok"},
            ]
        }
    ]
    report = validate_file(write(tmp_path / "d.jsonl", lines), tokenizer=strict, context_length=8192)
    assert [(e.code, e.line) for e in report.errors] == [("template_error", 11)]
    assert "no forbidden words" in report.errors[0].message and report.tokens.n_examples == 10


@pytest.mark.parametrize(
    "n, epochs",
    [
        (0, 25),
        (1, 25),
        (3, 25),
        (4, 25),
        (5, 20),
        (10, 10),
        (33, 4),
        (34, 3),
        (100, 3),
        (8333, 3),
        (8334, 2),
        (12_500, 2),
        (12_501, 1),
        (25_000, 1),
        (1_000_000, 1),
    ],
)
def test_auto_n_epochs_follows_openais_rule(n, epochs):
    assert auto_n_epochs(n) == epochs


def test_auto_n_epochs_keeps_examples_times_epochs_in_range_when_it_can():
    for n in range(1, 40_000, 7):
        e = auto_n_epochs(n)
        assert 1 <= e <= 25
        if 4 <= n <= 25_000:
            assert 100 <= n * e <= 25_000 or (e == 1 and n * e <= 25_000)


def test_trainer_uses_this_rule():
    from tunegate.train.config import auto_n_epochs as trainer_rule

    assert all(trainer_rule(n) == auto_n_epochs(n) for n in (1, 9, 33, 34, 5000, 8334, 30_000))


def test_quantiles_are_exact_nearest_rank():
    rng = random.Random(7)
    values = [int(rng.lognormvariate(5, 1)) for _ in range(5001)]
    d = _distribution(Counter(values))
    for q, got in ((50, d.p50), (95, d.p95)):
        assert got == int(np.percentile(values, q, method="inverted_cdf"))
    assert (d.min, d.max) == (min(values), max(values)) and d.mean == round(sum(values) / len(values), 2)


# -- the ChatML fast path in catalog/template.py ------------------------------------------------------


def random_conversation(rng: random.Random) -> list[dict]:
    pieces = [
        "",
        " ",
        "\n",
        "  lead",
        "trail  ",
        "multi\nline\n",
        "tabs\tand spaces",
        "<b>html</b>",
        "{{ jinja }}",
        "{% raw %}",
        "ünïcödé",
        "🙂",
        "\\n escaped",
        "\ue000 private",
        "end.",
    ]
    roles = ["system", "user", "assistant", "tool", "function"]
    out = []
    for _ in range(rng.randint(1, 7)):
        m = {"role": rng.choice(roles), "content": "".join(rng.choices(pieces, k=rng.randint(0, 5)))}
        if m["role"] == "assistant":
            if rng.random() < 0.3:
                m["weight"] = rng.choice([0, 1])
            if rng.random() < 0.2:
                m["tool_calls"] = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
        if rng.random() < 0.2:
            m["content"] = [{"type": "text", "text": m["content"]}, {"type": "text", "text": "part"}]
        out.append(m)
    return out


def test_chatml_fast_path_equals_the_jinja_render(tokenizer):
    assert chatml_default_system(tokenizer) is not None  # SmolLM2's template is plain ChatML
    rng = random.Random(0)
    for _ in range(500):
        messages = random_conversation(rng)
        for marked in (False, True):
            normalized = normalize_messages(messages, mark_trained=marked)
            for gen in (False, True):
                jinja = tokenizer.apply_chat_template(normalized, tokenize=False, add_generation_prompt=gen)
                assert _apply(tokenizer, normalized, gen) == jinja
        assert render(tokenizer, messages) == tokenizer.apply_chat_template(
            normalize_messages(messages, mark_trained=False), tokenize=False
        )


def test_fast_path_spans_equal_spans_from_the_jinja_render(tokenizer):
    jinja_tok = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    # Pin this copy's profile to "not ChatML" so it renders through Jinja; the text and spans must match.
    template_module._CHATML_PROFILES[(id(jinja_tok), jinja_tok.chat_template or "")] = None
    rng = random.Random(1)
    try:
        for _ in range(300):
            messages = random_conversation(rng)
            fast, slow = render_with_spans(tokenizer, messages), render_with_spans(jinja_tok, messages)
            assert (fast.text, fast.spans) == (slow.text, slow.spans)
            assert any(s for s in fast.spans) or not any(
                m["role"] == "assistant" and m.get("weight", 1) for m in messages
            )
    finally:
        template_module._CHATML_PROFILES.pop((id(jinja_tok), jinja_tok.chat_template or ""), None)


def test_templates_that_are_not_plain_chatml_use_jinja(tokenizer):
    trimming = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    trimming.chat_template = tokenizer.chat_template.replace("message['content']", "message['content'] | trim")
    assert chatml_default_system(trimming) is None
    llama = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    llama.chat_template = (
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
    )
    assert chatml_default_system(llama) is None
    messages = [{"role": "user", "content": "  hi  "}, {"role": "assistant", "content": " ok "}]
    assert render(trimming, messages) == trimming.apply_chat_template(messages, tokenize=False)
    assert render(llama, messages) == llama.apply_chat_template(messages, tokenize=False)


def test_sentinel_characters_in_the_data_are_kept_and_spans_stay_exact(tokenizer):
    # render_with_spans marks trained replies with private-use characters; data may contain the same ones.
    messages = [
        {"role": "user", "content": "a\ue001b\ue000"},
        {"role": "assistant", "content": "x\ue000y"},
        {"role": "user", "content": "\ue001"},
        {"role": "assistant", "content": "z", "weight": 0},
    ]
    r = render_with_spans(tokenizer, messages)
    assert r.text == render(tokenizer, messages)
    assert [r.text[s:e] for s, e in r.spans] == ["x\ue000y<|im_end|>"]


def test_count_rendered_equals_the_trainers_masks(tokenizer):
    # count_rendered (bisect over offsets, no masks) must give tokenize_rendered's counts exactly.
    from tunegate.catalog.template import count_rendered, tokenize_rendered

    rng = random.Random(2)
    rendered = [render_with_spans(tokenizer, random_conversation(rng)) for _ in range(300)]
    rendered += [render_with_spans(tokenizer, varied(i)["messages"]) for i in range(50)]
    rendered.append(
        render_with_spans(
            tokenizer,
            [
                {"role": "user", "content": "a<|im_end|>b 🙂🙂 数据"},
                {"role": "assistant", "content": "🙂 x<|im_start|>y 数"},
            ],
        )
    )
    masks = tokenize_rendered(tokenizer, rendered)
    for max_len in (None, 1, 17, 64, 200):
        expected = [
            (len(t.input_ids), t.n_trained, sum(t.loss_mask[:max_len]) if max_len else t.n_trained) for t in masks
        ]
        assert count_rendered(tokenizer, rendered, max_len) == expected
    assert sum(t.n_trained for t in masks) > 1000
