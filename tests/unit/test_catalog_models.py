"""Registering base models: `tunegate models add NAME PATH` (no server) and `POST /v1/admin/base_models`
(a real server, admin keys only) check a Hugging Face folder, report what its chat template supports,
and make it a base model that `/v1/models` lists; a bad folder gets every problem in one message."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import MODEL_CACHE
from tests.families import FAMILIES, build_family_model
from tests.server import RunningServer


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory, smol_path):
    return build_family_model(FAMILIES["gemma2"], tmp_path_factory.mktemp("g") / "gemma2", smol_path)


def _cli(data_dir, *args):
    """The real `tunegate models ...` command, in process (typer's runner), on its own data dir."""
    from typer.testing import CliRunner

    from tunegate.cli.main import app

    env = {"TUNEGATE_DATA_DIR": str(data_dir), "TUNEGATE_MODEL_CACHE_DIR": str(MODEL_CACHE)}
    return CliRunner().invoke(app, ["models", *args], env=env)


def test_cli_add_reports_features_and_registers(tmp_path, gemma2):
    result = _cli(tmp_path, "add", "gemma-mini", str(gemma2), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["name"] == "gemma-mini" and report["architecture"] == "Gemma2ForCausalLM"
    assert report["context_length"] == 4096
    t = report["chat_template"]
    assert (
        t["system_role"],
        t["system_conversion"],
        t["tool_role"],
        t["tools"],
        t["generation_prompt"],
        t["eot_token"],
    ) == (False, "folded into the first user turn", False, False, True, "<end_of_turn>")
    assert any("no system role" in w for w in report["warnings"])
    listed = _cli(tmp_path, "list")
    assert "gemma-mini" in listed.stdout and str(gemma2) in listed.stdout

    from tunegate.catalog import get_base_model, list_base_models
    from tunegate.settings import Settings

    settings = Settings(data_dir=tmp_path, model_cache_dir=MODEL_CACHE)
    assert "gemma-mini" in list_base_models(settings)
    info = get_base_model("gemma-mini", settings)
    assert info.template_sha256 == t["sha256"] and info.features.fold_system


def test_cli_add_refuses_a_bad_folder_with_every_problem(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    result = _cli(tmp_path / "d", "add", "bad", str(folder))
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "not a causal language model" in message and "holds no weights" in message
    assert "tokenizer does not load" in message
    result = _cli(tmp_path / "d", "add", "Bad Name!", str(folder))
    assert result.exit_code == 1 and "not a valid model name" in result.stderr


def test_admin_route_adds_and_lists(tmp_path, gemma2):
    with RunningServer(tmp_path / "data", {"TUNEGATE_MODEL_CACHE_DIR": str(MODEL_CACHE)}) as srv:
        admin = (srv.data_dir / "admin_key").read_text().strip()  # the operator's key, made at first start
        org_admin, user = srv.create_key("ops", admin=True), srv.create_key("dev")
        body = {"name": "gemma-mini", "path": str(gemma2)}
        denied = httpx.post(srv.base_url + "/admin/base_models", json=body, headers={"Authorization": f"Bearer {user}"})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "admin_required"
        # Base models are shared by every organisation: an organisation's admin may not register server paths.
        denied = httpx.post(
            srv.base_url + "/admin/base_models", json=body, headers={"Authorization": f"Bearer {org_admin}"}
        )
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "operator_required"
        bad = httpx.post(
            srv.base_url + "/admin/base_models",
            json={"name": "x", "path": str(tmp_path / "nope")},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "path"
        added = httpx.post(
            srv.base_url + "/admin/base_models", json=body, headers={"Authorization": f"Bearer {admin}"}, timeout=120
        )
        assert added.status_code == 200, added.text
        assert added.json()["chat_template"]["eot_token"] == "<end_of_turn>"
        listed = httpx.get(
            srv.base_url + "/admin/base_models", headers={"Authorization": f"Bearer {admin}"}, timeout=300
        ).json()["data"]
        gemma = next(m for m in listed if m["name"] == "gemma-mini")
        assert gemma["features"]["fold_system"] is True
        models = srv.client(user).models.list()
        assert "gemma-mini" in [m.id for m in models.data]
        entries = httpx.get(
            srv.base_url + "/admin/audit",
            params={"action": "base_model.added"},
            headers={"Authorization": f"Bearer {admin}"},
        ).json()["data"]
        assert [e["object_id"] for e in entries] == ["gemma-mini"]
