"""`tunegate demo`: the main job on the embedded defaults, end to end.

Starts the server, uploads the project's own sample dataset, fine-tunes the default base model with
a live progress bar, shows base and fine-tuned answers side by side on held-out prompts (all of them
sent at once, so the engine decodes them in one mixed-adapter batch), prints where the time went,
then keeps the server running and prints its URL and key. `bench/demo.py` times it end to end.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import typer
from rich.table import Table

from tunegate.catalog import DEFAULT_MODEL
from tunegate.cli.app import app
from tunegate.cli.common import console, out

# Enough for the taught two-line answer (~15-20 tokens) and the start of the base model's reply; every
# extra token is a decoding step for all 32 answers of the comparison.
COMPARE_TOKENS = 40


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
    from tunegate.threads import prepare_serving_process

    prepare_serving_process()  # this process serves: before torch loads (tunegate/threads.py)
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
    started = time.monotonic()
    with open(samples.path("demo_train"), "rb") as f:
        train = client.files.create(file=("demo_train.jsonl", f), purpose="fine-tune")
    with open(samples.path("demo_valid"), "rb") as f:
        valid = client.files.create(file=("demo_valid.jsonl", f), purpose="fine-tune")
    console.print(f"Uploaded {train.id} ({train.status}) and {valid.id} ({valid.status}).")
    uploaded = time.monotonic()
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
    trained = time.monotonic()
    ft_model = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    phases = _job_phases(client, job.id)

    table, hits = compare(client, model, ft_model, samples.held_out_prompts())
    out.print(table)
    n = len(samples.held_out_prompts())
    out.print(f"Follows the taught format: base {hits['base']}/{n}, fine-tuned {hits['ft']}/{n}.")
    compared = time.monotonic()
    timings = {
        "upload+validation": uploaded - started,
        **phases,
        "comparison": compared - trained,
        "total": compared - started,
    }
    out.print("Timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    if phases.get("training") and "safety gate" in phases:
        t = _gate_timings(client, job.id)
        out.print(
            f"Safety gate: {phases['safety gate']:.0f} s = {phases['safety gate'] / phases['training']:.0%} of the "
            f"training time ({phases['training']:.0f} s); the after-training steps together {phases['after training']:.0f} s"
            + (
                f" (gate: base answers {t.get('generate_base_s', 0):.1f} s, fine-tuned answers "
                f"{t.get('generate_tuned_s', 0):.1f} s"
                + (
                    f" with the regression check's {t['generate_tuned_planned_prompts']:.0f} prompts in the same pass"
                    if t.get("generate_tuned_planned_prompts")
                    else ""
                )
                + f", judging {t.get('judge_s', 0):.1f} s)."
                if t
                else "."
            )
        )
        if t and t.get("generate_tuned_planned_prompts") and "generate_tuned_own_share" in t:
            # The shared pass apportioned by token forwards: what the gate would cost without the regression check.
            own = phases["safety gate"] - t.get("generate_tuned_s", 0) * (1 - t["generate_tuned_own_share"])
            out.print(
                f"The gate's own prompts are {t['generate_tuned_own_share']:.0%} of that pass's token forwards: "
                f"the gate alone about {own:.0f} s = {own / phases['training']:.0%} of the training time."
            )
    out.print(
        f"\nServer: [bold]{base_url}[/bold]   dashboard: http://{settings.host}:{settings.port}/   "
        f"API key: [bold]{key}[/bold]"
    )
    out.print(f'Try: tunegate chat "{ft_model}" -m "{samples.held_out_prompts()[0][-1]["content"]}"')
    if keep_serving:
        out.print("The server keeps running; press Ctrl+C to stop.")
        try:
            while thread.is_alive():
                thread.join(1)
        except KeyboardInterrupt:
            pass
    server.should_exit = True
    thread.join(30)


def _job_phases(client, job_id: str) -> dict[str, float]:
    """Seconds the job spent screening (validating_files), waiting in the queue, starting its worker
    (loading the model, mixing in safety data), training (until its last step's metrics) and after
    training (saving, the safety gate, the regression check; the last two also apart), from its
    events' timestamps (whole seconds)."""
    events = sorted(client.fine_tuning.jobs.list_events(job_id, limit=100), key=lambda e: e.created_at)  # all pages
    at: dict[str, int] = {}
    for e in events:
        status = e.data.get("status") if e.type == "status" and isinstance(e.data, dict) else None
        if status and status not in at:
            at[status] = e.created_at
    job = client.fine_tuning.jobs.retrieve(job_id)
    running = at.get("running", job.created_at)
    queued = at.get("queued", running)
    began = next((e.created_at for e in events if e.message.startswith("Training started")), running)
    metrics = [e.created_at for e in events if e.type == "metrics"]
    trained = max(metrics) if metrics else began
    finished = job.finished_at or trained

    def started(check: str) -> int | None:
        return next(
            (
                e.created_at
                for e in events
                if isinstance(e.data, dict) and e.data.get("check") == check and e.data.get("stage") == "start"
            ),
            None,
        )

    gate, regression = started("gate"), started("regression")
    phases = {
        "screening": queued - job.created_at,
        "queue": running - queued,
        "worker start": began - running,
        "training": trained - began,
        "after training": finished - trained,
    }
    if gate is not None:
        phases["safety gate"] = (regression or finished) - gate
    if regression is not None:
        phases["regression check"] = finished - regression
    return phases


def _gate_timings(client, job_id: str) -> dict:
    """The gate's own timings (its decision event's data)."""
    for e in client.fine_tuning.jobs.list_events(job_id, limit=100):
        if isinstance(e.data, dict) and e.data.get("check") == "gate" and "timings" in e.data:
            return e.data["timings"] or {}
    return {}


def compare(client, model: str, ft_model: str, prompts: list[list[dict]]) -> tuple[Table, dict[str, int]]:
    """Base and fine-tuned answers side by side, and how many follow the taught format. Every request
    is sent at once, so the engine decodes base and fine-tuned answers together in mixed-adapter batches."""
    from tunegate import samples

    pairs = [(messages, m) for messages in prompts for m in (model, ft_model)]

    def answer(pair) -> str:
        messages, m = pair
        r = client.chat.completions.create(model=m, messages=messages, temperature=0, max_tokens=COMPARE_TOKENS)
        return r.choices[0].message.content or ""

    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        answers = list(pool.map(answer, pairs))
    table = Table("prompt", f"base: {model}", f"fine-tuned: {ft_model}", show_lines=True)
    hits = {"base": 0, "ft": 0}
    for i, messages in enumerate(prompts):
        base_text, ft_text = answers[2 * i], answers[2 * i + 1]
        hits["base"] += samples.follows_format(base_text)
        hits["ft"] += samples.follows_format(ft_text)
        table.add_row(messages[-1]["content"], base_text, ft_text)
    return table, hits
