"""`tunegate validate FILE [--model M] [--json]`: check a fine-tuning file locally, no server needed.

Thin: loads the base model's tokenizer through the catalog, runs files/validate.py, and prints the
report (a rich table, or the report JSON on stdout with --json). Exit codes: 0 valid, 1 invalid,
2 usage errors (missing file, unknown model). Does not own any validation rule.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from tunegate.cli.app import app
from tunegate.cli.common import cli_errors, console, out


@app.command()
def validate(
    file: Path = typer.Argument(..., help="JSONL file: chat (`messages`) or preference (DPO) examples."),
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Base model whose tokenizer and chat template count tokens (default: the configured default model).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    safety: bool = typer.Option(
        False,
        "--safety",
        help="Also run the server's training-data screening "
        "(moderation + job-level checks, with the default policy) and show its findings.",
    ),
):
    """Validate a fine-tuning file: every problem with its line, and token counts with the real template."""
    from tunegate.catalog import DEFAULT_MODEL, get_base_model, load_tokenizer
    from tunegate.files.validate import validate_file
    from tunegate.settings import Settings

    if not file.is_file():
        console.print(f"[red]error:[/red] {file} is not a file. Pass the path of a JSONL file.", highlight=False)
        raise typer.Exit(2)
    with cli_errors(2):
        settings = Settings()
        info = get_base_model(model or DEFAULT_MODEL, settings)
        tokenizer = load_tokenizer(info.path)
    report = validate_file(file, tokenizer=tokenizer, context_length=info.context_length)
    data = {**report.model_dump(), "model": info.name}
    blocked = False
    if safety and report.format == "chat":
        from tunegate.safety.moderation import get_moderator
        from tunegate.safety.policy import SafetyPolicy
        from tunegate.safety.screen import screen_training_file

        screening = screen_training_file(file, get_moderator(settings), SafetyPolicy())
        blocked = screening.blocked
        data["screening"] = screening.model_dump(exclude={"lines"}) | {
            "flagged_lines": [ln.model_dump() for ln in screening.lines if ln.flagged]
        }
    if as_json:
        print(json.dumps(data, ensure_ascii=False))
    else:
        _print(data)
        if "screening" in data:
            _print_screening(data["screening"])
    raise typer.Exit(0 if report.valid and not blocked else 1)


def _print_screening(screening: dict) -> None:
    colour = "red" if screening["blocked"] else "green"
    out.print(f"[{colour}]screening:[/{colour}] {screening['message']}", highlight=False)
    for f in screening["findings"]:
        lines = ", ".join(map(str, f["lines"][:10])) + (" ..." if len(f["lines"]) > 10 else "")
        out.print(
            f"  {'BLOCK' if f['blocking'] else 'note '} {f['check']}"
            f"{' (' + f['category'] + ')' if f.get('category') else ''}: {f['reason']} [lines {lines}]",
            highlight=False,
        )


def _print(report: dict) -> None:
    for kind, style in (("errors", "red"), ("warnings", "yellow")):
        problems, counts = report[kind], report[f"{kind[:-1]}_counts"]
        if not problems:
            continue
        table = Table(
            title=f"{kind.capitalize()} ({sum(counts.values()):,})",
            title_style=f"bold {style}",
            show_lines=True,
            expand=True,
        )
        table.add_column("line", justify="right", no_wrap=True)
        table.add_column("problem (param) and how to fix it", ratio=1)
        for p in problems:
            param = f" [dim]({escape(p['param'])})[/dim]" if p["param"] else ""
            table.add_row(str(p["line"] or "—"), f"[{style}]{p['code']}[/{style}]{param}\n{escape(p['message'])}")
        out.print(table)
        listed: dict[str, int] = {}
        for p in problems:
            listed[p["code"]] = listed.get(p["code"], 0) + 1
        hidden = {c: n - listed.get(c, 0) for c, n in counts.items() if n > listed.get(c, 0)}
        if hidden:
            out.print("Not listed: " + ", ".join(f"{n:,} more {c}" for c, n in hidden.items()), style="dim")
    tokens = report.get("tokens")
    if tokens:
        table = Table(title=f"Tokens with the {report['model']} chat template", expand=False)
        for col in ("", "min", "p50", "p95", "max", "mean"):
            table.add_column(col, justify="right" if col else "left")
        for key, label in (("per_example_total", "tokens per example"), ("per_example_trained", "trained tokens")):
            if tokens.get(key):
                d = tokens[key]
                table.add_row(label, *(f"{d[k]:,}" for k in ("min", "p50", "p95", "max")), f"{d['mean']:,.1f}")
        out.print(table)
        out.print(
            f"examples counted {tokens['n_examples']:,} · total tokens {tokens['total_tokens']:,} · trained "
            f"tokens {tokens['trained_tokens']:,} · truncated (over {tokens['context_length'] or '—'}) "
            f"{tokens['n_truncated']:,} · auto epochs {tokens['auto_n_epochs']} · estimated trained tokens "
            f"{tokens['estimated_trained_tokens']:,}",
            highlight=False,
        )
    n = report["n_examples"]
    if report["valid"]:
        out.print(f"[green]Valid:[/green] {n:,} {report['format'] or 'chat'} examples, ready for fine-tuning.")
    else:
        out.print(
            f"[red]Invalid:[/red] {sum(report['error_counts'].values()):,} error(s) in {n:,} examples. Fix "
            "them and validate again."
        )
