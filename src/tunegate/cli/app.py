"""The typer application object that every command module registers itself on."""

import typer

app = typer.Typer(
    name="tunegate",
    help="tunegate: self-hosted, OpenAI-compatible fine-tuning with server-enforced safety.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
