"""`tunegate keys create`: make an API key for an organisation (created on first use)."""

from __future__ import annotations

import typer

from tunegate.cli.app import app
from tunegate.cli.common import cli_errors, console

keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def create(
    org: str = typer.Option(..., "--org", help="Organisation name (created if new)."),
    admin: bool = typer.Option(False, "--admin", help="Give the key admin rights (policy, overrides, audit)."),
):
    """Create an API key; the key alone is printed on the last line of stdout."""
    from tunegate.auth import create_key
    from tunegate.db import open_database
    from tunegate.settings import Settings

    with cli_errors(2):
        settings = Settings()
        settings.ensure_dirs()
        key = create_key(open_database(settings.db_url), org, admin=admin)
    console.print(
        f"Created {'an admin' if admin else 'a'} key for organisation [bold]{org}[/bold]. "
        "It is shown once; store it safely."
    )
    print(key)
