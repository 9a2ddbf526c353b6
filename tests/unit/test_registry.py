"""Adapters on disk and their export: PEFT folders with meta.json, a merged model that plain
transformers loads and generates with, and a streamed tar.gz."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunegate.errors import NotFoundError
from tunegate.registry import (
    archive_adapter,
    export_adapter,
    export_merged,
    latest_checkpoint,
    list_checkpoints,
    load_adapter_model,
    prune_checkpoints,
    read_meta,
    save_adapter,
)
from tunegate.train.config import TrainConfig
from tunegate.train.lora import Precision, build_model


@pytest.fixture()
def adapter(tmp_path, tiny_model_path):
    """A LoRA adapter with non-zero weights, saved as the trainer saves its final adapter."""
    config = TrainConfig(
        base_model="tiny",
        base_model_path=str(tiny_model_path),
        template_sha256="t",
        training_file="unused",
        lora_r=4,
        lora_alpha=8,
    )
    model = build_model(config, Precision(torch.device("cpu"), None))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return save_adapter(
        model,
        tmp_path / "run" / "adapter",
        {"kind": "adapter", "config": config.to_dict(), "metrics": {"train_loss": 1.5}},
    )


def _prompt(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, return_tensors="pt")


def test_saved_adapter_is_a_peft_folder_with_meta(adapter):
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "meta.json"}
    assert read_meta(adapter)["metrics"] == {"train_loss": 1.5}
    assert not list(adapter.parent.glob(".adapter.tmp-*"))  # written beside, then renamed
    with pytest.raises(NotFoundError):
        read_meta(adapter.parent / "missing")


def test_export_merged_loads_in_plain_transformers_and_matches_the_adapter(adapter, tiny_model_path, tmp_path):
    out = export_merged(adapter, None, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = _prompt(tokenizer)
    with torch.no_grad():
        expected = load_adapter_model(adapter)(**inputs).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()(**inputs).logits
        got = merged(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)  # the adapter is really merged in
    generated = merged.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 5
    assert json.loads((out / "tunegate_meta.json").read_text())["kind"] == "adapter"


def test_export_adapter_copies_a_loadable_adapter(adapter, tmp_path, tiny_model_path):
    from peft import PeftModel

    out = export_adapter(adapter, tmp_path / "exported")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), str(out))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    assert (out / "meta.json").exists()


def test_archive_streams_a_tar_gz_of_the_public_files(adapter, tmp_path):
    (adapter / "trainer_state.pt").write_bytes(b"optimizer state is private to resuming")
    chunks = list(archive_adapter(adapter, "my-model", chunk_size=1024))
    assert len(chunks) > 3  # produced piece by piece
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:gz") as tar:
        names = tar.getnames()
        weights = tar.extractfile("my-model/adapter_model.safetensors").read()
    assert "my-model/adapter_config.json" in names and "my-model/meta.json" in names
    assert not any(n.endswith("trainer_state.pt") for n in names)
    assert weights == (adapter / "adapter_model.safetensors").read_bytes()


def test_checkpoint_listing_ignores_partial_folders_and_prunes_the_oldest(tmp_path, adapter):
    import shutil

    run = tmp_path / "job"
    for step in (5, 10, 15):
        shutil.copytree(adapter, run / "checkpoints" / f"step-{step}")
        (run / "checkpoints" / f"step-{step}" / "trainer_state.pt").write_bytes(b"x")
    (run / "checkpoints" / ".step-20.tmp-123").mkdir()  # a save killed half-way
    (run / "checkpoints" / "step-20").mkdir()  # no meta.json: not a checkpoint
    assert [s for s, _ in list_checkpoints(run)] == [5, 10, 15]
    assert latest_checkpoint(run).name == "step-15"
    prune_checkpoints(run, keep=2)
    assert [s for s, _ in list_checkpoints(run)] == [10, 15]
    assert not (run / "checkpoints" / ".step-20.tmp-123").exists()
