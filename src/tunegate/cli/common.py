"""Helpers shared by CLI commands: the console, converting tunegate errors to a message and exit
code (the CLI edge of the error hierarchy), and finding the server and key to talk to."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import typer
from rich.console import Console

from tunegate.errors import TunegateError
from tunegate.settings import Settings

console = Console(stderr=True)
out = Console()


@contextmanager
def cli_errors(exit_code: int = 1):
    """Print a tunegate error as one red line (never a traceback) and exit with `exit_code`."""
    try:
        yield
    except TunegateError as exc:
        param = f" (param: {exc.param})" if exc.param else ""
        console.print(f"[red]error:[/red] {exc.message}{param}", highlight=False)
        raise typer.Exit(exit_code) from None


def api_client(base_url: str | None, api_key: str | None):
    """An official `openai` client pointed at a tunegate server (flags, env, or the local defaults)."""
    try:
        from openai import OpenAI
    except ImportError:
        console.print("[red]error:[/red] the `openai` package is needed for this command: pip install openai")
        raise typer.Exit(2) from None
    settings = Settings()
    base_url = base_url or os.environ.get("TUNEGATE_URL") or f"http://{settings.host}:{settings.port}/v1"
    if api_key is None:
        from tunegate.auth import read_admin_key

        api_key = (
            os.environ.get("TUNEGATE_API_KEY") or os.environ.get("OPENAI_API_KEY") or read_admin_key(settings.data_dir)
        )
    if not api_key:
        console.print(
            "[red]error:[/red] no API key: pass --api-key, set TUNEGATE_API_KEY, or run `tunegate serve` "
            "once in this directory to create the local admin key."
        )
        raise typer.Exit(2)
    return OpenAI(base_url=base_url, api_key=api_key, max_retries=0)


def is_tty() -> bool:
    return sys.stdout.isatty()
