"""`tunegate validate`: exit codes 0/1/2, the report JSON on stdout, the rich table, and one run of
the real entry point in a subprocess. No server; the real SmolLM2 tokenizer from the test cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.conftest import MODEL_CACHE
from tunegate.cli.main import app  # the console script's app, with every command registered

from .test_validate_cases import good, tool_example, write


@pytest.fixture()
def env(tmp_path, smol_path, monkeypatch):
    values = {"TUNEGATE_DATA_DIR": str(tmp_path / "data"), "TUNEGATE_MODEL_CACHE_DIR": str(MODEL_CACHE)}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture()
def good_file(tmp_path):
    return write(tmp_path / "good.jsonl", [good(i) for i in range(8)] + [tool_example(i) for i in range(4)])


@pytest.fixture()
def bad_file(tmp_path):
    return write(
        tmp_path / "bad.jsonl",
        [good(i) for i in range(10)] + ["{oops", {"messages": [{"role": "user", "content": "hi"}]}],
    )


def test_valid_file_prints_json_and_exits_0(env, good_file, tokenizer):
    result = CliRunner().invoke(app, ["validate", str(good_file), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["valid"] is True and report["n_examples"] == 12 and report["model"] == "smollm2-135m-instruct"
    assert report["tokens"]["n_examples"] == 12 and report["tokens"]["context_length"] == 8192


def test_invalid_file_exits_1_with_every_problem(env, bad_file):
    result = CliRunner().invoke(app, ["validate", str(bad_file), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert {(e["code"], e["line"]) for e in report["errors"]} == {
        ("invalid_json", 11),
        ("example_missing_assistant_message", 12),
    }


def test_table_output_names_codes_lines_and_tokens(env, bad_file, good_file):
    result = CliRunner().invoke(app, ["validate", str(bad_file)], env={"COLUMNS": "160"})
    assert result.exit_code == 1
    assert "invalid_json" in result.stdout and "example_missing_assistant_message" in result.stdout
    assert "│   11 │" in result.stdout and "Invalid" in result.stdout
    result = CliRunner().invoke(app, ["validate", str(good_file)], env={"COLUMNS": "160"})
    assert result.exit_code == 0 and "trained tokens" in result.stdout and "Valid" in result.stdout


def test_usage_errors_exit_2(env, tmp_path, good_file):
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "not a file" in result.output
    result = CliRunner().invoke(app, ["validate", str(good_file), "--model", "no-such-model"])
    assert result.exit_code == 2 and "no-such-model" in result.output
    assert CliRunner().invoke(app, ["validate"]).exit_code == 2


def test_console_entry_point_in_a_subprocess(env, bad_file):
    proc = subprocess.run(
        [sys.executable, "-m", "tunegate.cli.main", "validate", str(bad_file), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)  # stdout holds the report alone
    assert report["valid"] is False and report["error_counts"] == {
        "invalid_json": 1,
        "example_missing_assistant_message": 1,
    }
