"""`tunegate jobs ...`: create, list, show, cancel, pause, resume and follow fine-tuning jobs
through the API (the official openai client), with a rich progress bar."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from tunegate.catalog import DEFAULT_MODEL
from tunegate.cli.app import app
from tunegate.cli.common import api_client, console, out
from tunegate.jobs.lifecycle import TERMINAL

jobs_app = typer.Typer(help="Fine-tuning jobs.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")

URL = typer.Option(None, "--base-url", help="API base URL (default: TUNEGATE_URL or the local server).")
KEY = typer.Option(None, "--api-key", help="API key (default: TUNEGATE_API_KEY or the local admin key).")


def _sdk_errors(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        import openai

        try:
            return fn(*a, **kw)
        except openai.APIStatusError as exc:
            err = (exc.body or {}) if isinstance(exc.body, dict) else {}
            param = f" (param: {err.get('param')})" if err.get("param") else ""
            console.print(f"[red]error {exc.status_code}:[/red] {err.get('message', str(exc))}{param}", highlight=False)
            raise typer.Exit(1) from None
        except openai.APIConnectionError:
            console.print("[red]error:[/red] cannot reach the tunegate server. Start it with `tunegate serve`.")
            raise typer.Exit(1) from None

    return wrapper


@jobs_app.command("create")
@_sdk_errors
def create(
    training_file: str = typer.Argument(..., help="A file id (file-...) or a local JSONL path to upload."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m"),
    validation_file: str = typer.Option(None, "--validation-file", "-v"),
    suffix: str = typer.Option(None, "--suffix"),
    n_epochs: str = typer.Option("auto", "--epochs"),
    batch_size: str = typer.Option("auto", "--batch-size"),
    lr_multiplier: str = typer.Option("auto", "--lr-multiplier"),
    seed: int = typer.Option(None, "--seed"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Show live progress until the job ends."),
    base_url: str = URL,
    api_key: str = KEY,
):
    """Create a fine-tuning job (uploading local files first)."""
    client = api_client(base_url, api_key)

    def file_id(ref: str | None) -> str | None:
        if ref is None or ref.startswith("file-"):
            return ref
        path = Path(ref)
        if not path.is_file():
            console.print(f"[red]error:[/red] {ref} is neither a file id nor a readable file.")
            raise typer.Exit(2)
        with open(path, "rb") as f:
            up = client.files.create(file=(path.name, f), purpose="fine-tune")
        console.print(f"Uploaded {path} as {up.id} ({up.status}).")
        return up.id

    def num(v: str, cast):
        return v if v == "auto" else cast(v)

    hp = {
        "n_epochs": num(n_epochs, int),
        "batch_size": num(batch_size, int),
        "learning_rate_multiplier": num(lr_multiplier, float),
    }
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=file_id(training_file),
        validation_file=file_id(validation_file),
        suffix=suffix,
        seed=seed,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
    )
    console.print(f"Created job [bold]{job.id}[/bold] ({job.status}).")
    if follow:
        _follow(client, job.id)
    print(job.id)


@jobs_app.command("list")
@_sdk_errors
def list_(limit: int = typer.Option(20), base_url: str = URL, api_key: str = KEY):
    """List fine-tuning jobs, newest first."""
    client = api_client(base_url, api_key)
    table = Table("id", "status", "model", "fine_tuned_model", "created")
    for j in client.fine_tuning.jobs.list(limit=limit).data:
        table.add_row(
            j.id,
            j.status,
            j.model,
            j.fine_tuned_model or "",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created_at)),
        )
    out.print(table)


@jobs_app.command("show")
@_sdk_errors
def show(job_id: str, base_url: str = URL, api_key: str = KEY):
    """Show one job as JSON."""
    out.print_json(api_client(base_url, api_key).fine_tuning.jobs.retrieve(job_id).model_dump_json())


def _control(action: str, job_id: str, base_url: str | None, api_key: str | None) -> None:
    job = getattr(api_client(base_url, api_key).fine_tuning.jobs, action)(job_id)
    console.print(f"{job.id}: {job.status}")


@jobs_app.command("cancel")
@_sdk_errors
def cancel(job_id: str, base_url: str = URL, api_key: str = KEY):
    """Cancel a job (a running one stops after its current step)."""
    _control("cancel", job_id, base_url, api_key)


@jobs_app.command("pause")
@_sdk_errors
def pause(job_id: str, base_url: str = URL, api_key: str = KEY):
    """Pause a job (it saves a checkpoint and can be resumed)."""
    _control("pause", job_id, base_url, api_key)


@jobs_app.command("resume")
@_sdk_errors
def resume(job_id: str, base_url: str = URL, api_key: str = KEY):
    """Resume a paused job from its last checkpoint."""
    _control("resume", job_id, base_url, api_key)


@jobs_app.command("events")
@_sdk_errors
def events(
    job_id: str,
    follow: bool = typer.Option(False, "--follow", "-f"),
    limit: int = typer.Option(50),
    as_json: bool = typer.Option(False, "--json"),
    base_url: str = URL,
    api_key: str = KEY,
):
    """Show a job's events (oldest first); --follow shows a live progress bar until it ends."""
    client = api_client(base_url, api_key)
    if follow:
        _follow(client, job_id)
        return
    evs = list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=limit).data))
    for e in evs:
        if as_json:
            print(e.model_dump_json())
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(e.created_at))
            out.print(f"{stamp} [{e.level}] {e.message}", highlight=False)


def _follow(client, job_id: str) -> str:
    """Live progress (step/total, loss, ETA) and messages until the job reaches a final state."""
    seen: set[str] = set()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("training", total=None, loss="-")
        while True:
            evs = list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=100).data))
            for e in evs:
                if e.id in seen:
                    continue
                seen.add(e.id)
                if e.type == "metrics" and isinstance(e.data, dict):
                    d = e.data
                    progress.update(
                        task,
                        completed=d.get("step", 0),
                        total=d.get("total_steps"),
                        loss=f"{d['train_loss']:.3f}" if d.get("train_loss") is not None else "-",
                    )
                else:
                    progress.console.print(f"[dim]{e.message}[/dim]", highlight=False)
            job = client.fine_tuning.jobs.retrieve(job_id)
            progress.update(task, description=job.status)
            if job.status in TERMINAL:
                break
            time.sleep(1.0)
    if job.status == "succeeded":
        console.print(f"[green]succeeded[/green]: {job.fine_tuned_model}")
    elif job.error:
        console.print(f"[red]{job.status}[/red]: {job.error.code}: {job.error.message}", highlight=False)
    return job.status
