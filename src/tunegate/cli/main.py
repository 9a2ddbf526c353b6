"""Entry point of the `tunegate` console script: imports every command module so each can
register itself on the shared typer app, then runs it."""

from __future__ import annotations

import importlib

from tunegate.cli.app import app

COMMAND_MODULES = ["serve", "keys", "validate", "models", "jobs", "chat", "export", "audit", "demo"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"tunegate.cli.{_name}")

__all__ = ["app"]

if __name__ == "__main__":
    app()
