"""No cold-start wait: a server on a fresh model cache converts the packaged base model while it
starts (saying so), before it answers; the first upload then finds the converted folder and converts
nothing. Uses the real packaged GGUF (one conversion, ~10-30 s)."""

from __future__ import annotations

import io
import json

from tests.conftest import tiny_server_env
from tests.server import RunningServer
from tunegate.catalog.prepare import needs_conversion, prepare_default_model
from tunegate.settings import Settings

EXAMPLE = {
    "messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
}


def test_conversion_happens_at_start_not_in_the_first_request(tmp_path, tiny_model_path):
    cache = tmp_path / "models"
    env = {
        **tiny_server_env(tiny_model_path, TUNEGATE_START_WORKERS="false"),
        "TUNEGATE_MODEL_CACHE_DIR": str(cache),
    }
    folder = cache / "smollm2-135m-instruct"
    with RunningServer(tmp_path / "data", env) as srv:
        # Ready means converted: the folder is complete before any request was made.
        assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
        log = srv.log_path.read_text()
        assert log.count("Preparing base model smollm2-135m-instruct") == 1 and "ready in" in log
        converted_at = (folder / "config.json").stat().st_mtime_ns
        key = (tmp_path / "data" / "admin_key").read_text().strip()
        data = "".join(json.dumps(EXAMPLE) + "\n" for _ in range(10)).encode()
        f = srv.client(key).files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")
        assert f.status == "processed"
        # The first upload counted tokens with the converted model's tokenizer and converted nothing itself.
        assert (folder / "config.json").stat().st_mtime_ns == converted_at
        assert srv.log_path.read_text().count("Preparing base model") == 1
    assert not needs_conversion(Settings(data_dir=tmp_path / "data", model_cache_dir=cache))


def test_prepared_cache_is_not_converted_again(tmp_path):
    from tests.conftest import MODEL_CACHE

    said = []
    settings = Settings(data_dir=tmp_path, model_cache_dir=MODEL_CACHE)
    path = prepare_default_model(settings, said.append)
    assert path == MODEL_CACHE / "smollm2-135m-instruct" and said == []
    # A name pointed at an operator's own folder is never converted.
    mine = Settings(data_dir=tmp_path, model_cache_dir=tmp_path / "empty", base_models={"smollm2-135m-instruct": path})
    assert not needs_conversion(mine)
