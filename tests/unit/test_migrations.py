"""Alembic migrations on both metadata stores: upgrade to head gives exactly the models' schema,
downgrade to base removes it, upgrade again works; on PostgreSQL servers starting at once migrate
once (an advisory lock), not into each other."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from tunegate.db import Base, Database, open_database


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/m.db"
    return request.getfixturevalue("pg_server").create_database("mig")


def _config(db: Database) -> Config:
    from pathlib import Path

    import tunegate.db

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(tunegate.db.__file__).parent / "migrations"))
    cfg.attributes["connection_engine"] = db.engine
    return cfg


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(url):
    db = open_database(url)  # upgrade to head, as every server start does
    assert _tables(url) == set(Base.metadata.tables)
    with db.engine.connect() as con:  # the migrated schema is the models' schema, column for column
        diffs = compare_metadata(MigrationContext.configure(con), Base.metadata)
    assert diffs == []
    command.downgrade(_config(db), "base")
    assert _tables(url) == set()
    command.upgrade(_config(db), "head")
    assert _tables(url) == set(Base.metadata.tables)
    db.migrate()  # idempotent
    db.engine.dispose()


def test_concurrent_starts_migrate_once(pg_server):
    """Four processes (as four servers would) migrate one empty database at the same moment."""
    import subprocess
    import sys

    url = pg_server.create_database("race")
    code = f"from tunegate.db import open_database; open_database({url!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=180)[1] for p in procs if p.wait(timeout=180) != 0]
    assert errors == []
    assert _tables(url) == set(Base.metadata.tables)
