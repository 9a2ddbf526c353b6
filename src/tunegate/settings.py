"""Settings: every knob of the platform, read from `TUNEGATE_*` environment variables.

Owns configuration only. There is no global settings object: the app factory and the CLI each
build one `Settings` and pass it down; a training worker is handed its server's whole `Settings`
(`worker_env` / `from_worker_env`), so settings given in code reach it too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The variable that carries a server's settings, as JSON, to the worker processes it starts.
WORKER_SETTINGS_ENV = "TUNEGATE_WORKER_SETTINGS"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEGATE_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(default=Path("./.tunegate"), description="Where the database, files and artifacts live.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite file in data_dir.")
    storage_url: str | None = Field(
        default=None,
        description="Where files and artifacts live: unset = data_dir (local disk or a shared mount); "
        "s3://BUCKET[/PREFIX] = an S3-compatible object store (the `s3` extra), data_dir then being this "
        "server's local cache. Credentials: the standard AWS variables.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible store (MinIO, SeaweedFS, Ceph); default: AWS."
    )
    worker_scratch_dir: Path | None = Field(
        default=None,
        description="With an object store: where training workers keep local copies of their inputs "
        "and outputs; default: a `tunegate-worker` folder in the system's temporary directory.",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, description="Largest accepted upload (413 above).")
    model_cache_dir: Path | None = Field(
        default=None, description="Where converted base models are cached; default: data_dir/models."
    )
    base_models: dict[str, Path] = Field(
        default_factory=dict, description="Extra base models: name -> local Hugging Face model folder."
    )
    start_workers: bool = Field(default=True, description="Run the job supervisor and workers in this server.")
    worker_concurrency: int = Field(default=1, ge=1, description="Training jobs run at once by the local executor.")
    max_job_retries: int = Field(default=2, ge=0, description="Restarts of a crashed training worker before failing.")
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    heartbeat_timeout_seconds: float = Field(default=60.0, gt=0)
    keep_checkpoints: int = Field(default=3, ge=1)
    torch_threads: int | None = Field(default=None, description="Threads per worker; default: all cores.")
    worker_allocator: Literal["glibc", "jemalloc"] = Field(
        default="glibc",
        description="Training workers' malloc: glibc is ~7% faster for our trainer on the 2-core "
        "box, jemalloc (decay off) needs ~20% less peak memory (bench/train.py).",
    )
    bootstrap_admin: bool = Field(default=True, description="Create a local admin key on first start.")
    adapter_cache_size: int = Field(default=8, ge=1, description="Adapters kept loaded by the serving engine.")
    max_batch_size: int = Field(default=16, ge=1, description="Sequences decoded together by the serving engine.")
    max_queue: int = Field(default=64, ge=1, description="Waiting chat requests before answering 429.")
    batch_concurrency: int = Field(
        default=8,
        ge=1,
        description="Batch API lines in the engine at once (keep it "
        "below max_batch_size so interactive requests always find free slots).",
    )
    max_upload_total_bytes: int = Field(
        default=8 * 1024**3,
        ge=1,
        description="Largest file made with the Uploads API (parts up to max_upload_bytes each).",
    )
    request_timeout_seconds: float = Field(default=300.0, gt=0)
    prefix_cache_tokens: int = Field(
        default=4096,
        ge=0,
        description="Prompt tokens whose K/V the serving engine "
        "keeps for reuse by prompts that begin the same way (0 = off).",
    )
    prefill_chunk_tokens: int = Field(
        default=512,
        ge=0,
        description="While sequences decode, longer prompts are "
        "prefilled this many tokens per step (0 = whole prompts at once).",
    )
    prefill_group_rows: int = Field(
        default=8,
        ge=0,
        description="A burst of requests is admitted this many choices per engine step, so the first "
        "group streams while the next is prefilled: lower time to first token for most of a burst (0 = all at once).",
    )
    max_n: int = Field(default=16, ge=1, description="Largest `n` (choices) of one chat request (400 above).")
    max_output_tokens: int = Field(default=4096, ge=1, description="Largest `max_tokens` of one chat request.")
    chat_concurrency_per_key: int = Field(default=32, ge=1, description="Chat requests one API key has in flight.")
    chat_tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Token budget of each organisation (prompt + n x max_tokens, unused refunded); default: none.",
    )
    header_timeout_seconds: float = Field(
        default=15.0,
        gt=0,
        description="A connection must finish sending a request's headers within this time, or it is closed.",
    )
    body_idle_timeout_seconds: float = Field(default=30.0, gt=0, description="408 when a request body pauses longer.")
    body_total_timeout_seconds: float = Field(default=900.0, gt=0, description="408 when a request body takes longer.")
    keep_alive_timeout_seconds: int = Field(
        default=5, ge=1, description="Idle keep-alive connections are closed after."
    )
    max_uploads_per_key: int = Field(default=4, ge=1, description="Uploads one API key may stream at once (429 above).")
    moderator: str = Field(
        default="builtin",
        description="Moderator name in the `moderators` plugin registry (builtin|http, or an installed plug-in's).",
    )
    engine: str = Field(default="transformers", description="Serving engine in the `engines` plugin registry.")
    executor: str = Field(default="local", description="Where training workers run: the `executors` plugin registry.")
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster (host:port) of TUNEGATE_EXECUTOR=ray; default: the cluster this machine belongs to.",
    )
    ray_num_cpus: float = Field(
        default=1.0, gt=0, description="CPUs each job's Ray task declares (each rank, for data-parallel jobs)."
    )
    ray_num_gpus: float = Field(
        default=0.0, ge=0, description="GPUs each job's Ray task declares (each rank, for data-parallel jobs)."
    )
    ray_memory_gb: float | None = Field(
        default=None, gt=0, description="Memory each job's Ray task declares (each rank, for data-parallel jobs)."
    )
    moderation_url: str | None = Field(default=None, description="Base URL of an OpenAI-compatible moderation API.")
    python_graders: bool = Field(
        default=False,
        description="Allow `python` graders (user code, run sandboxed: no "
        "network, limited memory/CPU, timeout). Admin's choice.",
    )
    python_grader_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    regression_check: Literal["warn", "block", "off"] = Field(
        default="warn",
        description="After training: base vs fine-tuned on the closed-book set and the validation "
        "file; a significant rise in confidently wrong answers warns or blocks.",
    )

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'tunegate.db').resolve()}"

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    def worker_env(self) -> dict[str, str]:
        """The environment entry that hands these exact settings to a worker process."""
        return {WORKER_SETTINGS_ENV: self.model_dump_json()}

    @classmethod
    def from_worker_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings a server handed to this worker; from `TUNEGATE_*` variables when run by hand."""
        raw = (os.environ if environ is None else environ).get(WORKER_SETTINGS_ENV)
        return cls.model_validate_json(raw) if raw else cls()

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.models_dir, self.files_dir, self.artifacts_dir):
            d.mkdir(parents=True, exist_ok=True)
