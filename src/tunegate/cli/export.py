"""`tunegate export MODEL OUT [--merged]`: write a fine-tuned model's adapter (PEFT format) or a
merged Hugging Face model folder that plain transformers loads. Reads the local store; no server."""

from __future__ import annotations

from pathlib import Path

import typer

from tunegate.cli.app import app
from tunegate.cli.common import cli_errors, console


@app.command()
def export(
    model: str = typer.Argument(..., help="An ft: model or checkpoint id."),
    out_dir: Path = typer.Argument(..., help="Folder to write (must not exist or be empty)."),
    merged: bool = typer.Option(False, "--merged", help="Merge the adapter into the base weights."),
    org: str = typer.Option(None, help="Organisation that owns the model (default: the one in its id)."),
):
    """Export a fine-tuned model."""
    from tunegate.auth import Principal
    from tunegate.db import open_database
    from tunegate.errors import InvalidRequestError
    from tunegate.models.service import resolve
    from tunegate.registry import export_adapter, export_merged
    from tunegate.settings import Settings

    with cli_errors(1):
        settings = Settings()
        db = open_database(settings.db_url)
        if not model.startswith("ft:"):
            raise InvalidRequestError(
                "Only fine-tuned models (ft:...) can be exported; base models are already plain Hugging Face folders.",
                param="model",
            )
        if out_dir.exists() and any(out_dir.iterdir()):
            raise InvalidRequestError(f"{out_dir} is not empty; choose a new folder.", param="out_dir")
        org_id = _owner(db, model, org)
        principal = Principal(org_id=org_id, org_name=org or "", project_id="", key_id="cli", is_admin=True)
        m = resolve(db, settings, principal, model)
        if merged:
            export_merged(m.adapter_path, m.base.path, out_dir)
        else:
            export_adapter(m.adapter_path, out_dir)
    console.print(f"Wrote {'merged model' if merged else 'adapter'} of {model} to {out_dir}")


def _owner(db, model: str, org: str | None) -> str:
    from sqlalchemy import select

    from tunegate.db import Checkpoint, FineTunedModel, Organization
    from tunegate.errors import NotFoundError

    with db.session() as s:
        if org:
            org_id = s.scalar(select(Organization.id).where(Organization.name == org))
            if org_id:
                return org_id
        row = s.get(FineTunedModel, model) or s.scalar(select(Checkpoint).where(Checkpoint.model_id == model))
        if row is None:
            raise NotFoundError(
                f"The model `{model}` does not exist in this data dir.", param="model", code="model_not_found"
            )
        return row.org_id
