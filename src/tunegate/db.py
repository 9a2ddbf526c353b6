"""The metadata store: SQLAlchemy tables, engine/session set-up and Alembic migration on start.

Owns the schema of every stored object (all belong to an organisation) and how to open a session.
SQLite in the data dir is the embedded default; a PostgreSQL URL works with the same models and
migrations. Business rules live in the stages, not here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String, Text, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from tunegate.ids import now


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False)  # platform-wide powers (the first key)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    revoked_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="uploaded")
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    validation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)
    # Nanoseconds: orders objects created within the same second (ids are random, like OpenAI's).
    created_ns: Mapped[int] = mapped_column(BigInteger, default=time.time_ns, index=True)
    expires_at: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)  # files.create(expires_after=)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    method: Mapped[dict[str, Any]] = mapped_column(JSON)  # requested method incl. hyperparameters
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)  # resolved once training starts
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # our extensions (lora, safety flags)
    status: Mapped[str] = mapped_column(String(32), index=True)
    control: Mapped[str | None] = mapped_column(String(16), nullable=True)  # cancel|pause requested
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)
    created_ns: Mapped[int] = mapped_column(BigInteger, default=time.time_ns, index=True)
    started_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_files: Mapped[list[Any]] = mapped_column(JSON, default=list)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The supervising API server's lease on an in-flight job (jobs/executor.py): another server takes
    # the job over only once the lease has expired, so several servers on one database never both act.
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    lease_expires: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # step, total_steps, last metrics
    safety: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # screening + gate reports


class JobEvent(Base):
    __tablename__ = "job_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(32), default="message")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    step: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(256), unique=True)
    path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # an on-demand gate run's decision
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class FineTunedModel(Base):
    __tablename__ = "fine_tuned_models"
    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    base_model: Mapped[str] = mapped_column(String(256))
    adapter_path: Mapped[str] = mapped_column(Text)
    deployable: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class Upload(Base):
    """A chunked upload (OpenAI's Uploads API): parts on disk until `complete` makes one File."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)  # announced at create; `complete` checks it
    mime_type: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    received: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes of all parts so far
    file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    file_expires_after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    expires_at: Mapped[int] = mapped_column(Integer)


class UploadPart(Base):
    __tablename__ = "upload_parts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class Batch(Base):
    """A Batch API batch; per-line results live in `batch_lines` so a restart resumes without loss."""

    __tablename__ = "batches"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # whose rights the lines run with
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    request_counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    times: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # in_progress_at, completed_at, ...
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    created_ns: Mapped[int] = mapped_column(BigInteger, default=time.time_ns, index=True)
    expires_at: Mapped[int] = mapped_column(Integer)
    # OpenAI's `output_expires_after` ({"anchor": "created_at", "seconds": N}): expiry of the output and error files
    output_expires_after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class BatchLine(Base):
    """One finished request of a batch (committed as it finishes: never lost, never run twice)."""

    __tablename__ = "batch_lines"
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)  # the output or error file's JSON line


class CheckpointPermission(Base):
    """A checkpoint of one organisation shared with a project (of any organisation)."""

    __tablename__ = "checkpoint_permissions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    checkpoint: Mapped[str] = mapped_column(String(256), index=True)  # the checkpoint's model id
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)  # the owner
    project_id: Mapped[str] = mapped_column(String(64), index=True)  # the grantee
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    created_ns: Mapped[int] = mapped_column(BigInteger, default=time.time_ns)


class Eval(Base):
    """An eval (OpenAI's Evals API): the item schema and the testing criteria (graders)."""

    __tablename__ = "evals"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    data_source_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    testing_criteria: Mapped[list[Any]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    created_ns: Mapped[int] = mapped_column(BigInteger, default=time.time_ns, index=True)


class EvalRun(Base):
    """One run of an eval over a data source; its output items are committed one by one, so a run
    interrupted by a restart resumes where it stopped (the lease says which server is running it)."""

    __tablename__ = "eval_runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    principal: Mapped[dict[str, Any]] = mapped_column(JSON)  # whose rights the run's models are used with
    name: Mapped[str] = mapped_column(String(256))
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    data_source: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued|in_progress|completed|failed|canceled
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    n_items: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    created_ns: Mapped[int] = mapped_column(BigInteger, default=time.time_ns, index=True)


class EvalOutputItem(Base):
    __tablename__ = "eval_output_items"
    id: Mapped[str] = mapped_column(String(64), unique=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), primary_key=True)
    datasource_item_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    eval_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # pass|fail|error
    datasource_item: Mapped[dict[str, Any]] = mapped_column(JSON)
    results: Mapped[list[Any]] = mapped_column(JSON)
    sample: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)
    org_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(64), nullable=True)  # api key id or "cli"
    action: Mapped[str] = mapped_column(String(64), index=True)
    object_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Database:
    """One engine + session factory per process; `session()` is a commit-or-rollback scope."""

    def __init__(self, url: str):
        self.url = url
        is_sqlite = url.startswith("sqlite")
        self.engine: Engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30} if is_sqlite else {}, pool_pre_ping=True
        )
        if is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        s = self._factory()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def owned(self, model: type[Base], row_id: str, org_id: str) -> Any | None:
        """The `model` row with `row_id` when it belongs to organisation `org_id`, else None: a caller
        must not learn that another organisation's id exists, so both read as unknown."""
        with self.session() as s:
            row = s.get(model, row_id)
        return row if row is not None and getattr(row, "org_id", None) == org_id else None

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent, safe on every start)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        cfg.attributes["connection_engine"] = self.engine
        command.upgrade(cfg, "head")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the API read while a worker writes events; busy_timeout rides out short write locks.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_database(url: str) -> Database:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    db = Database(url)
    db.migrate()
    return db
