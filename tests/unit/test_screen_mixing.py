"""The project's refusal examples and safety data mixing."""

from __future__ import annotations

from tunegate.safety.mixing import mix_safety_examples, n_safety_examples, refusal_examples
from tunegate.safety.refusal import is_refusal


def _user(example):
    return next(m["content"] for m in example["messages"] if m["role"] == "user")


def test_at_least_100_varied_refusal_examples():
    examples = refusal_examples()
    assert len(examples) >= 100
    assert len({_user(e) for e in examples}) == len(examples)
    for e in examples:
        roles = [m["role"] for m in e["messages"]]
        assert roles == ["user", "assistant"]
        assert is_refusal(e["messages"][-1]["content"]), e["messages"][-1]["content"]
    # Varied openings: no single first three words dominate what the model learns to say.
    openings = [" ".join(e["messages"][-1]["content"].split()[:3]) for e in examples]
    assert max(openings.count(o) for o in set(openings)) / len(openings) < 0.2


def test_mixing_adds_about_the_fraction_at_seeded_positions():
    data = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(100)
    ]
    before = [dict(d) for d in data]
    mixed = mix_safety_examples(data, fraction=0.03, seed=1)
    assert data == before  # input untouched
    added = [e for e in mixed if e not in data]
    assert len(mixed) == 100 + len(added) == 100 + n_safety_examples(100, 0.03)
    assert 0.025 <= len(added) / len(mixed) <= 0.05
    assert [e for e in mixed if e in data] == data  # original order kept
    assert mix_safety_examples(data, 0.03, seed=1) == mixed
    positions = lambda m: [i for i, e in enumerate(m) if e not in data]  # noqa: E731
    assert positions(mix_safety_examples(data, 0.03, seed=2)) != positions(mixed)


def test_mixing_small_and_large_files():
    one = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    assert len(mix_safety_examples(one, 0.03)) == 2  # at least one safety example
    assert mix_safety_examples(one, 0.0) == one
    big = one * 5000
    mixed = mix_safety_examples(big, 0.03, seed=0)
    added = [e for e in mixed if e != one[0]]
    assert len(added) == n_safety_examples(5000, 0.03) > len(refusal_examples())
    # Every refusal is used, none more than once more than another.
    counts = [sum(_user(e) == _user(r) for e in added) for r in refusal_examples()]
    assert min(counts) >= 1 and max(counts) - min(counts) <= 1
