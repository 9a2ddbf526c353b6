"""`tunegate chat MODEL`: a streaming chat REPL, or one shot with `-m`, through the API."""

from __future__ import annotations

import typer

from tunegate.cli.app import app
from tunegate.cli.common import api_client, console
from tunegate.cli.jobs import KEY, URL, _sdk_errors


@app.command()
@_sdk_errors
def chat(
    model: str = typer.Argument(..., help="A base model or one of your ft: models."),
    message: str = typer.Option(None, "-m", "--message", help="Send one message, print the answer, exit."),
    system: str = typer.Option(None, "--system", "-s", help="System prompt."),
    temperature: float = typer.Option(0.7, "--temperature", "-t"),
    max_tokens: int = typer.Option(256, "--max-tokens"),
    base_url: str = URL,
    api_key: str = KEY,
):
    """Chat with a model (streaming)."""
    client = api_client(base_url, api_key)
    history: list[dict] = [{"role": "system", "content": system}] if system else []

    def turn(text: str) -> None:
        history.append({"role": "user", "content": text})
        stream = client.chat.completions.create(
            model=model, messages=history, stream=True, temperature=temperature, max_tokens=max_tokens
        )
        parts = []
        finish = None
        for chunk in stream:
            if chunk.choices:
                delta = chunk.choices[0].delta.content or ""
                parts.append(delta)
                print(delta, end="", flush=True)
                finish = chunk.choices[0].finish_reason or finish
        print()
        if finish == "content_filter":
            console.print("[yellow](the answer was stopped by the moderation policy)[/yellow]")
        history.append({"role": "assistant", "content": "".join(parts)})

    if message is not None:
        turn(message)
        return
    console.print(f"Chatting with [bold]{model}[/bold]. Empty line or Ctrl+D to quit.")
    while True:
        try:
            text = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if not text.strip():
            break
        turn(text)
