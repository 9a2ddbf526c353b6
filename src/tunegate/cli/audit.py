"""`tunegate audit`: read the audit log (directly from the database; needs no server)."""

from __future__ import annotations

import json
import time

import typer
from rich.table import Table

from tunegate.cli.app import app
from tunegate.cli.common import out


@app.command("audit")
def audit_cmd(
    action: str = typer.Option(None, help="Only this action, e.g. job.created."),
    org: str = typer.Option(None, help="Only this organisation (name)."),
    limit: int = typer.Option(50, min=1, max=10000),
    as_json: bool = typer.Option(False, "--json"),
):
    """Show audit entries, newest first."""
    from sqlalchemy import select

    from tunegate import audit
    from tunegate.db import Organization, open_database
    from tunegate.settings import Settings

    settings = Settings()
    settings.ensure_dirs()
    db = open_database(settings.db_url)
    org_id = None
    if org:
        with db.session() as s:
            org_id = s.scalar(select(Organization.id).where(Organization.name == org))
        if org_id is None:
            out.print(f"No organisation named {org}.")
            raise typer.Exit(1)
    rows = audit.read(db, org_id=org_id, action=action, limit=limit)
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    table = Table("time", "org", "actor", "action", "object", "details")
    for r in rows:
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"])),
            r["org_id"] or "",
            r["actor"] or "",
            r["action"],
            r["object_id"] or "",
            json.dumps(r["details"])[:80],
        )
    out.print(table)
