"""`tunegate serve`: run the API server (and the local job executor) on the embedded defaults."""

from __future__ import annotations

import logging

import typer

from tunegate.cli.app import app


@app.command()
def serve(
    host: str = typer.Option(None, help="Interface to listen on (default: TUNEGATE_HOST or 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default: TUNEGATE_PORT or 8000)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
):
    """Serve the OpenAI-compatible API, the dashboard and the job workers."""
    from tunegate.threads import prepare_serving_process

    prepare_serving_process()  # before torch loads: one intra-op thread outside the engine (tunegate/threads.py)
    import uvicorn

    from tunegate.api.app import create_app
    from tunegate.settings import Settings

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from tunegate.api.http import header_timeout_protocol
    from tunegate.errors import TunegateError

    try:
        api = create_app(settings)
    except TunegateError as exc:  # e.g. TUNEGATE_STORAGE_URL unusable: say which setting, exit non-zero
        typer.secho(f"Error: {exc.message}", fg="red", err=True)
        raise typer.Exit(2) from None
    # Slow clients are timed out at every stage: headers (the protocol), body (the guard), idle keep-alive.
    uvicorn.run(
        api,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        http=header_timeout_protocol(settings.header_timeout_seconds),
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
    )
