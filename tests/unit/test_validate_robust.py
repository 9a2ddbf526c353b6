"""Bad input never breaks the validator: empty and binary files, broken UTF-8, a million-line file
(exact counts, a small report), any bytes at all (Hypothesis), and the fixed-memory duplicate table."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunegate.files.dedup import SeenLines
from tunegate.files.validate import MAX_LISTED_PER_CODE, ValidationReport, validate_file

from .test_validate_cases import good, tool_example


def check(path: Path, **kw) -> ValidationReport:
    report = validate_file(path, **kw)
    json.dumps(report.model_dump())  # the report always serialises
    assert report.valid == (not report.errors)
    return report


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    report = check(tmp_path / "empty.jsonl")
    assert [(e.code, e.line) for e in report.errors] == [("empty_file", None)]
    assert report.n_examples == 0 and report.format is None and report.tokens is None


def test_missing_file_is_a_report_not_an_exception(tmp_path):
    report = check(tmp_path / "nope.jsonl")
    assert [e.code for e in report.errors] == ["unreadable_file"]


def test_binary_garbage(tmp_path, tokenizer):
    rng = random.Random(3)
    (tmp_path / "bin.jsonl").write_bytes(bytes(rng.getrandbits(8) for _ in range(200_000)))
    report = check(tmp_path / "bin.jsonl", tokenizer=tokenizer, context_length=8192)
    assert not report.valid and report.n_lines > 100
    assert set(report.error_counts) <= {"invalid_utf8", "invalid_json", "blank_line"}
    assert report.error_counts["invalid_utf8"] > 0


def test_broken_utf8_names_the_line_and_byte(tmp_path, tokenizer):
    lines = [json.dumps(good(i)).encode() for i in range(12)]
    text = json.dumps(good(99), ensure_ascii=False).replace("Fact", "Fäct").encode()
    cut = text.index("ä".encode()) + 1  # keep only the first byte of the two-byte "ä"
    lines[7] = text[:cut] + text[cut + 1 :]
    (tmp_path / "u.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report = check(tmp_path / "u.jsonl", tokenizer=tokenizer, context_length=8192)
    assert [(e.code, e.line) for e in report.errors] == [("invalid_utf8", 8)]
    assert f"byte {cut}" in report.errors[0].message
    assert report.tokens.n_examples == 11


def test_a_million_line_bad_file_gives_exact_counts_and_a_small_report(tmp_path):
    kinds = [
        b'{"messages": [{"role": "user", "content": "hi"}]}',
        b"not json",
        b"",
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 3}]}',
        b"\xff\xfe",
    ]
    path = tmp_path / "million.jsonl"
    with open(path, "wb") as f:
        f.write(b"\n".join(kinds[i % 5] for i in range(1_000_000)) + b"\n")
    report = check(path)
    n = 200_000
    assert report.n_lines == 1_000_000 and report.n_examples == 4 * n
    assert report.error_counts == {
        "example_missing_assistant_message": n,
        "invalid_json": n,
        "blank_line": n,
        "invalid_weight": n,
        "invalid_utf8": n,
    }
    assert report.warning_counts["duplicate_example"] == 2 * n - 2
    listed = {c: sum(e.code == c for e in report.errors) for c in report.error_counts}
    assert set(listed.values()) == {MAX_LISTED_PER_CODE}
    assert [e.line for e in report.errors if e.code == "blank_line"][:3] == [3, 8, 13]
    assert len(report.model_dump_json()) < 200_000


def _peak_rss_kib(path: Path) -> int:
    import subprocess
    import sys

    code = (
        "import resource, sys; from tunegate.files.validate import validate_file; "
        "r = validate_file(sys.argv[1]); assert r.valid, r.errors; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    return int(
        subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    )


def test_memory_does_not_grow_with_the_file(tmp_path):
    sizes = {}
    for n in (20_000, 200_000):
        path = tmp_path / f"{n}.jsonl"
        with open(path, "w") as f:
            f.writelines(json.dumps(good(i)) + "\n" for i in range(n))
        sizes[n] = (path.stat().st_size, _peak_rss_kib(path) * 1024)
    (small_file, small_rss), (big_file, big_rss) = sizes[20_000], sizes[200_000]
    # Ten times the data, and the peak grows by far less than a tenth of the extra bytes.
    assert big_rss - small_rss < (big_file - small_file) / 10, sizes


# -- Hypothesis: any bytes at all -------------------------------------------------------------------

FRAGMENTS = [
    b"\n",
    b"\r\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"messages"',
    b":",
    b",",
    b'"role"',
    b'"assistant"',
    b'"content"',
    b"null",
    b"\xff",
    b"\xc3",
    b"\\ud800",
    b"<|im_start|>",
    b"\xef\xbb\xbf",
    b" ",
]
structured_bytes = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=8)), max_size=60).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=3000), structured_bytes))
def test_validator_never_raises_on_any_bytes(data):
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as f:
        f.write(data)
        f.flush()
        check(Path(f.name))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.sampled_from(["user", "assistant", "system", "tool", "function", "text", "call_1", "<|im_end|>", "\ud800"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "role",
                    "content",
                    "weight",
                    "tool_calls",
                    "tool_call_id",
                    "name",
                    "function",
                    "arguments",
                    "id",
                    "type",
                    "text",
                    "messages",
                    "tools",
                    "input",
                    "preferred_output",
                    "non_preferred_output",
                    "parallel_tool_calls",
                    "function_call",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "function", "bot"]), "content": json_values},
    optional={"weight": json_values, "tool_calls": json_values, "tool_call_id": json_values, "name": json_values},
)
example = st.one_of(
    st.builds(
        lambda ms, extra: {"messages": ms, **extra},
        st.lists(message, max_size=6),
        st.dictionaries(st.sampled_from(["tools", "functions", "parallel_tool_calls", "x"]), json_values, max_size=2),
    ),
    st.builds(
        lambda i, p, n: {"input": i, "preferred_output": p, "non_preferred_output": n},
        st.one_of(json_values, st.builds(lambda ms: {"messages": ms}, st.lists(message, max_size=4))),
        st.one_of(json_values, st.lists(message, max_size=2)),
        st.lists(message, max_size=2),
    ),
    json_values,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(examples=st.lists(example, max_size=12))
def test_validator_never_raises_on_any_json_with_the_real_tokenizer(tokenizer, examples):
    lines = [json.dumps(e).encode() for e in examples] + [json.dumps(tool_example(1)).encode()]
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as f:
        f.write(b"\n".join(lines))
        f.flush()
        report = check(Path(f.name), tokenizer=tokenizer, context_length=64)
    assert report.n_examples == len(lines)


# -- the duplicate table -----------------------------------------------------------------------------


def test_duplicate_table_is_exact_until_full_then_keeps_what_it_has():
    seen = SeenLines(slots_log2=4)  # 16 slots, remembers 11
    try:
        for i in range(11):
            assert seen.first_line(f"example {i}".encode(), i + 1) is None
        assert not seen.full and seen.size == 11
        assert seen.first_line(b"example 4", 50) == 5
        assert seen.first_line(b"new one", 51) is None and seen.full
        assert seen.first_line(b"new one", 52) is None  # not remembered once full
        assert seen.first_line(b"example 10", 53) == 11
    finally:
        seen.close()


def test_duplicates_report_the_first_line(tmp_path):
    lines = [good(i) for i in range(10)] + [good(2), good(2), good(7)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    report = check(tmp_path / "d.jsonl")
    dups = [(w.line, w.message) for w in report.warnings if w.code == "duplicate_example"]
    assert [line for line, _ in dups] == [11, 12, 13]
    assert "line 3" in dups[0][1] and "line 3" in dups[1][1] and "line 8" in dups[2][1]
