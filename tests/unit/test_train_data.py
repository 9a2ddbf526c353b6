"""What the trainer trains on: assistant tokens of weighted messages (with the end-of-turn token),
truncation, skipped examples, seeded order and micro-batching."""

from __future__ import annotations

import json

import pytest

from tunegate.errors import InvalidRequestError
from tunegate.train.data import Example, epoch_batches, load_dataset, micro_batches
from tunegate.train.packing import pack

CONVERSATIONS = [
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a primary colour."},
        {"role": "assistant", "content": "Red."},
    ],
    [  # multi-turn: the first answer is excluded with weight 0, the second is trained
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "Five, surely.", "weight": 0},
        {"role": "user", "content": "Check again."},
        {"role": "assistant", "content": "Sorry: 2 + 2 = 4.", "weight": 1},
    ],
    [  # multi-turn, both answers trained, content given as text parts
        {"role": "user", "content": "Say hello in French."},
        {"role": "assistant", "content": [{"type": "text", "text": "Bonjour."}]},
        {"role": "user", "content": "And in Spanish?"},
        {"role": "assistant", "content": "Hola."},
    ],
]


def _write(path, conversations):
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    return path


def _expected_trained_text(messages, eos):
    def text(c):
        return c if isinstance(c, str) else "".join(p["text"] for p in c)

    return "".join(text(m["content"]) + eos for m in messages if m["role"] == "assistant" and m.get("weight", 1) != 0)


def test_trained_tokens_are_the_weighted_assistant_contents_with_end_of_turn(tmp_path, tokenizer):
    ds = load_dataset(_write(tmp_path / "t.jsonl", CONVERSATIONS), tokenizer, max_seq_len=4096)
    assert len(ds.examples) == 3 and ds.n_truncated == 0 and ds.n_dropped == 0
    for example, messages in zip(ds.examples, CONVERSATIONS):
        # The targets of the packed row are exactly what the loss is computed on.
        row = pack([(example.input_ids, example.loss_mask)])
        trained = tokenizer.decode(row.targets.tolist())
        assert trained == _expected_trained_text(messages, tokenizer.eos_token)
        assert "Five" not in trained and "Check again" not in trained


def test_packed_targets_keep_each_examples_trained_tokens(tmp_path, tokenizer):
    ds = load_dataset(_write(tmp_path / "t.jsonl", CONVERSATIONS), tokenizer, max_seq_len=4096)
    row = pack([(e.input_ids, e.loss_mask) for e in ds.examples])
    expected = "".join(_expected_trained_text(m, tokenizer.eos_token) for m in CONVERSATIONS)
    assert tokenizer.decode(row.targets.tolist()) == expected
    assert row.cu_seq_lens.tolist()[-1] == row.n_tokens == sum(len(e.input_ids) for e in ds.examples)
    # Positions restart at every example boundary.
    starts = row.cu_seq_lens.tolist()[:-1]
    assert all(row.position_ids[0, s].item() == 0 for s in starts)


def test_truncation_and_examples_left_without_trained_tokens(tmp_path, tokenizer):
    long_answer = " ".join(f"word{i}" for i in range(200))
    conversations = [
        [{"role": "user", "content": "Short question?"}, {"role": "assistant", "content": long_answer}],
        [{"role": "user", "content": "x " * 300}, {"role": "assistant", "content": "Cut away."}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello.", "weight": 0}],
        CONVERSATIONS[0],
    ]
    ds = load_dataset(_write(tmp_path / "t.jsonl", conversations), tokenizer, max_seq_len=64)
    assert all(len(e.input_ids) <= 64 for e in ds.examples)
    assert ds.n_truncated == 2  # the long answer and the long question
    assert ds.n_dropped == 2  # the long question leaves no answer; the weight-0 answer trains nothing
    assert len(ds.examples) == 2
    assert (
        tokenizer.decode(pack([(ds.examples[0].input_ids, ds.examples[0].loss_mask)]).targets.tolist()) in long_answer
    )


def test_file_with_nothing_to_train_is_a_clear_error(tmp_path, tokenizer):
    conversations = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey", "weight": 0}]]
    with pytest.raises(InvalidRequestError) as err:
        load_dataset(_write(tmp_path / "t.jsonl", conversations), tokenizer, max_seq_len=128)
    assert err.value.param == "training_file" and "weight" in err.value.message


def test_epoch_order_is_seeded_and_covers_every_example_once():
    a = epoch_batches(50, 8, seed=3, epoch=0)
    assert a == epoch_batches(50, 8, seed=3, epoch=0)
    assert a != epoch_batches(50, 8, seed=3, epoch=1) and a != epoch_batches(50, 8, seed=4, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(50))
    assert [len(b) for b in a] == [8] * 6 + [2]


def test_micro_batches_respect_the_token_budget_and_keep_order():
    examples = [Example([1] * n, [0] + [1] * (n - 1)) for n in (30, 50, 20, 90, 10)]
    groups = micro_batches(examples, 80)
    assert [[len(e.input_ids) for e in g] for g in groups] == [[30, 50], [20], [90], [10]]
    assert [e for g in groups for e in g] == examples
