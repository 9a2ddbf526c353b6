"""GPU training options, as far as a CPU can prove them: gradient checkpointing gives the same loss and
gradients, QLoRA is a clear 400 without a CUDA GPU, a real out-of-memory error (raised by a memory limit
on the process) makes the step redo itself with smaller micro-batches, and every step reports tokens/s
and peak memory. bf16, QLoRA and the memory-fitted micro-batch run only on a GPU (scripts/gpu-check.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tunegate.errors import InvalidRequestError
from tunegate.train.config import TrainConfig
from tunegate.train.lora import Precision, build_model, fit_micro_batch_tokens, forward_loss, require_qlora
from tunegate.train.packing import pack

CPU = Precision(torch.device("cpu"), None)


def _config(path, **kw):
    return TrainConfig(
        base_model="tiny", base_model_path=str(path), template_sha256="t", training_file="x", lora_dropout=0.0, **kw
    )


def test_gradient_checkpointing_same_loss_and_gradients(tiny_model_path, tokenizer):
    from tunegate.catalog.template import tokenize_examples

    examples = tokenize_examples(
        tokenizer,
        [
            [
                {"role": "user", "content": f"Count to {i}."},
                {"role": "assistant", "content": " ".join(map(str, range(i)))},
            ]
            for i in (3, 9)
        ],
    )
    row = pack([(e.input_ids, e.loss_mask) for e in examples])
    results = []
    for checkpointing in (False, True):
        model = build_model(_config(tiny_model_path, gradient_checkpointing=checkpointing), CPU)
        with torch.no_grad():  # non-zero LoRA B, so the adapters' gradients are not trivially related
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn_like(p, generator=torch.Generator().manual_seed(1)) * 0.1)
        model.train()
        assert model.base_model.model.is_gradient_checkpointing == checkpointing
        loss, _ = forward_loss(model, row, CPU)
        loss.backward()
        results.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_qlora_is_a_clear_400_without_cuda(tiny_model_path):
    with pytest.raises(InvalidRequestError) as e:
        require_qlora("tunegate.quantization")
    assert e.value.status_code == 400 and e.value.code == "quantization_unavailable"
    assert e.value.param == "tunegate.quantization" and "CUDA GPU" in e.value.message
    with pytest.raises(InvalidRequestError) as e:
        build_model(_config(tiny_model_path, quantization="nf4"), CPU)
    assert e.value.code == "quantization_unavailable"
    with pytest.raises(InvalidRequestError) as e:
        _config(tiny_model_path, quantization="int3")
    assert e.value.param == "quantization"


def test_fitted_micro_batch_grows_with_memory_and_checkpointing():
    config = _config("x")
    small = fit_micro_batch_tokens(8 * 2**30, config, 32, 4096, 128_256)  # Llama 3 8B shape, 8 GiB free
    large = fit_micro_batch_tokens(64 * 2**30, config, 32, 4096, 128_256)
    ckpt = fit_micro_batch_tokens(8 * 2**30, _config("x", gradient_checkpointing=True), 32, 4096, 128_256)
    assert 256 <= small < large <= 65_536 and ckpt > small
    assert all(v & (v - 1) == 0 for v in (small, large, ckpt))  # powers of two


_CAPPED_RUN = r"""
import json, resource, sys
import torch
from tunegate.catalog import load_tokenizer
from tunegate.train.config import TrainConfig
from tunegate.train.lora import Precision, build_model
from tunegate.train.recipe import run_training

config = TrainConfig(**json.loads(sys.argv[1]))
# Warm every import and allocation path once, then cap the address space a little above what the process
# has: the 4096-token micro-batches (fp32 logits over the vocabulary at every trained position) no longer fit.
load_tokenizer(config.base_model_path)
build_model(config, Precision(torch.device("cpu"), None))
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[3]) * 2**20, resource.RLIM_INFINITY))
events = []
result = run_training(config, sys.argv[2], events.append, lambda: None)
print(json.dumps({"status": result.status, "events": events}))
"""


def test_out_of_memory_redoes_the_step_with_smaller_micro_batches(tmp_path, tiny_model_path):
    """A real allocation failure (the process's memory is capped with RLIMIT_AS), not a simulated one."""
    answer = " ".join(f"w{i}" for i in range(350))  # ~700 trained tokens per example
    lines = [
        json.dumps({"messages": [{"role": "user", "content": f"List {k}."}, {"role": "assistant", "content": answer}]})
        for k in range(8)
    ]
    data = tmp_path / "t.jsonl"
    data.write_text("\n".join(lines) + "\n")
    base = dict(
        base_model="tiny",
        base_model_path=str(tiny_model_path),
        template_sha256="t",
        training_file=str(data),
        n_epochs=1,
        batch_size=8,
        num_threads=1,
        seed=3,
        lora_dropout=0.0,
        # LoRA on q/v only trains through PEFT's forward, whose full-vocabulary logits at every trained
        # position make a 8192-token micro-batch overflow the cap; the fused forward (all projections,
        # train/fused.py) never holds those logits, so it would fit.
        target_modules=["q_proj", "v_proj"],
    )

    def run(out, cap_mb, **kw):
        env = {**os.environ, "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-c", _CAPPED_RUN, json.dumps(base | kw), str(out), str(cap_mb)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    capped = run(tmp_path / "capped", 900, micro_batch_tokens=8192)
    assert capped["status"] == "succeeded"
    warnings = [e["message"] for e in capped["events"] if e["level"] == "warn"]
    assert warnings and warnings[0] == "Out of memory with micro-batches of 8192 tokens; redoing this step with 4096."
    step = next(e["data"] for e in capped["events"] if e["type"] == "metrics")
    assert step["micro_batch_tokens"] < 8192
    assert step["tokens_per_second"] > 0 and step["peak_memory_mb"] > 0
    # The redone step is the step a run that fits from the start takes.
    roomy = run(tmp_path / "roomy", 1 << 16, micro_batch_tokens=step["micro_batch_tokens"])
    first = next(e["data"] for e in roomy["events"] if e["type"] == "metrics")
    assert first["train_loss"] == pytest.approx(step["train_loss"], rel=1e-5)
    assert first["grad_norm"] == pytest.approx(step["grad_norm"], rel=1e-4)
    assert not [e for e in roomy["events"] if e["level"] == "warn"]
