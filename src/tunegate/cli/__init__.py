"""Command-line interface (typer + rich): thin commands that call the stages and print."""
