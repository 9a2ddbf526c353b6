"""`tunegate demo`: the main job on the embedded defaults, end to end.

Starts the server, uploads the project's own sample dataset, fine-tunes the default base model with
a live progress bar, shows base and fine-tuned answers side by side on held-out prompts, then keeps
the server running and prints its URL and key.
"""

from __future__ import annotations

import threading
import time

import typer
from rich.table import Table

from tunegate.catalog import DEFAULT_MODEL
from tunegate.cli.app import app
from tunegate.cli.common import console, out


def _start_server(settings):
    """uvicorn in a background thread of this process; returns the server (for shutdown)."""
    import uvicorn

    from tunegate.api.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            console.print(
                f"[red]error:[/red] the server could not start on {settings.host}:{settings.port} "
                "(is the port in use? pass --port)."
            )
            raise typer.Exit(1)
        time.sleep(0.1)
    return server, thread


@app.command()
def demo(
    port: int = typer.Option(None, help="Port for the server (default: TUNEGATE_PORT or 8000)."),
    model: str = typer.Option(None, help=f"Base model (default: {DEFAULT_MODEL})."),
    epochs: int = typer.Option(None, help="Override the sample job's epochs."),
    keep_serving: bool = typer.Option(True, "--keep-serving/--exit", help="Leave the server running at the end."),
):
    """Fine-tune the default model on the sample data and compare it with the base model."""
    from openai import OpenAI

    from tunegate import samples
    from tunegate.auth import ensure_admin_key, read_admin_key
    from tunegate.cli.jobs import _follow
    from tunegate.db import open_database
    from tunegate.settings import Settings

    settings = Settings(**{k: v for k, v in {"port": port}.items() if v is not None})
    settings.ensure_dirs()
    model = model or DEFAULT_MODEL
    ensure_admin_key(open_database(settings.db_url), settings.data_dir)
    key = read_admin_key(settings.data_dir)
    console.rule("[bold]tunegate demo")
    console.print(f"Starting the server on http://{settings.host}:{settings.port} (data in {settings.data_dir}) ...")
    server, thread = _start_server(settings)
    base_url = f"http://{settings.host}:{settings.port}/v1"
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)

    console.print(
        "Sample task: teach the model to answer in two lines, `Answer: ...` then "
        "`Confidence: high|medium|low` (a format the base model never uses)."
    )
    with open(samples.path("demo_train"), "rb") as f:
        train = client.files.create(file=("demo_train.jsonl", f), purpose="fine-tune")
    with open(samples.path("demo_valid"), "rb") as f:
        valid = client.files.create(file=("demo_valid.jsonl", f), purpose="fine-tune")
    console.print(f"Uploaded {train.id} ({train.status}) and {valid.id} ({valid.status}).")
    hp = {**samples.DEMO_HYPERPARAMETERS, **({"n_epochs": epochs} if epochs else {})}
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=train.id,
        validation_file=valid.id,
        suffix="demo",
        seed=0,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
    )
    console.print(f"Created job {job.id}; training {model} on CPU ...")
    status = _follow(client, job.id)
    if status != "succeeded":
        console.print("[red]The demo job did not succeed; see the events above.[/red]")
        raise typer.Exit(1)
    ft_model = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model

    table = Table("prompt", f"base: {model}", f"fine-tuned: {ft_model}", show_lines=True)
    hits = {"base": 0, "ft": 0}
    prompts = samples.held_out_prompts()
    for messages in prompts:
        answers = []
        for name, m in (("base", model), ("ft", ft_model)):
            r = client.chat.completions.create(model=m, messages=messages, temperature=0, max_tokens=64)
            text = r.choices[0].message.content or ""
            hits[name] += samples.follows_format(text)
            answers.append(text)
        table.add_row(messages[-1]["content"], *answers)
    out.print(table)
    n = len(prompts)
    out.print(f"Follows the taught format: base {hits['base']}/{n}, fine-tuned {hits['ft']}/{n}.")
    out.print(
        f"\nServer: [bold]{base_url}[/bold]   dashboard: http://{settings.host}:{settings.port}/   "
        f"API key: [bold]{key}[/bold]"
    )
    out.print(f'Try: tunegate chat "{ft_model}" -m "{prompts[0][-1]["content"]}"')
    if keep_serving:
        out.print("The server keeps running; press Ctrl+C to stop.")
        try:
            while thread.is_alive():
                thread.join(1)
        except KeyboardInterrupt:
            pass
    server.should_exit = True
    thread.join(30)
