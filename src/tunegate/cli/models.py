"""`tunegate models add NAME PATH` / `tunegate models list`: register local base models (in this
data dir; needs no server) and show what each folder's chat template supports."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from tunegate.cli.app import app
from tunegate.cli.common import cli_errors, out

models_app = typer.Typer(help="Base models: register local Hugging Face folders.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("add")
def add_cmd(name: str, path: str, as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
    """Check a Hugging Face causal-LM folder and register it as base model NAME."""
    from tunegate.catalog.local import add_model
    from tunegate.settings import Settings

    settings = Settings()
    with cli_errors():
        report = add_model(settings, name, path)
    if as_json:
        print(json.dumps(report))
        return
    t = report["chat_template"]
    table = Table("", name, show_header=True)
    for key, value in [
        ("path", report["path"]),
        ("architecture", report["architecture"]),
        ("context length", report["context_length"]),
        ("system role", _system(t)),
        ("tool role", t["tool_role"]),
        ("tool definitions", t["tools"]),
        ("generation prompt", t["generation_prompt"]),
        ("end-of-turn token", t["eot_token"]),
        ("template sha256", t["sha256"][:16]),
    ]:
        table.add_row(key, ("yes" if value else "no") if isinstance(value, bool) else str(value))
    out.print(table)
    for w in report["warnings"]:
        out.print(f"[yellow]note:[/yellow] {w}", highlight=False)
    out.print(f"Registered `{name}`: use it as `model` when creating fine-tuning jobs.")


def _system(t: dict) -> str:
    return "yes" if t["system_role"] else f"no ({t['system_conversion']})"


@models_app.command("list")
def list_cmd():
    """Base models of this data dir and where they live."""
    from tunegate.catalog.local import registered_models
    from tunegate.catalog.registry import list_base_models
    from tunegate.settings import Settings

    settings = Settings()
    added = registered_models(settings)
    table = Table("name", "path")
    for name in list_base_models(settings):
        table.add_row(name, str(settings.base_models.get(name) or added.get(name) or "(packaged)"))
    out.print(table)
