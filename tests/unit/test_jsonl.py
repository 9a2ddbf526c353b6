"""The one JSONL reader: blank lines skipped, line numbers counted from 1 over every line, a line that
is not JSON marked (never dropped), and the readers built on it naming the bad line."""

from __future__ import annotations

import json

import pytest

from tunegate.errors import InvalidRequestError
from tunegate.jsonl import INVALID, numbered_jsonl, read_jsonl, write_jsonl
from tunegate.train.dpo import read_preferences
from tunegate.train.rft import load_prompts


def test_numbered_lines_count_blanks_and_mark_broken_json(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2\n[3]\n', encoding="utf-8")
    rows = list(numbered_jsonl(path))
    assert [n for n, _ in rows] == [1, 4, 5]
    assert rows[0][1] == {"a": 1} and rows[1][1] is INVALID and rows[2][1] == [3]


def test_write_then_read_round_trips_unicode(tmp_path):
    rows = [{"text": "naïve café ✓"}, [1, 2], "plain"]
    write_jsonl(tmp_path / "out.jsonl", rows)
    assert read_jsonl(tmp_path / "out.jsonl") == rows
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temporary left behind


def _pair(i: int) -> str:
    return json.dumps(
        {
            "input": {"messages": [{"role": "user", "content": f"q{i}"}]},
            "preferred_output": [{"role": "assistant", "content": "yes"}],
            "non_preferred_output": [{"role": "assistant", "content": "no"}],
        }
    )


@pytest.mark.parametrize("bad", ['{"input": ', '{"input": {}}', "[1]"])
def test_preference_reader_names_the_bad_line(tmp_path, bad):
    path = tmp_path / "pairs.jsonl"
    path.write_text(f"{_pair(1)}\n\n{bad}\n{_pair(2)}\n", encoding="utf-8")
    with pytest.raises(InvalidRequestError) as err:
        read_preferences(path, "validation_file")
    assert "Line 3 of the validation file" in err.value.message and err.value.param == "validation_file"
    path.write_text(f"{_pair(1)}\n\n{_pair(2)}\n", encoding="utf-8")
    assert [p[0][0]["content"] for p in read_preferences(path)] == ["q1", "q2"]


@pytest.mark.parametrize("bad", ["not json", '{"messages": [{"role": "assistant", "content": "x"}]}'])
def test_prompt_reader_names_the_bad_line(tmp_path, bad):
    good = json.dumps({"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"})
    path = tmp_path / "prompts.jsonl"
    path.write_text(f"{good}\n{bad}\n", encoding="utf-8")
    with pytest.raises(InvalidRequestError) as err:
        load_prompts(path)
    assert err.value.message.startswith("Line 2 of the training file") and err.value.param == "training_file"
    path.write_text(f"\n{good}\n\n", encoding="utf-8")
    assert load_prompts(path).examples == [json.loads(good)]
