"""The fused training forward (train/fused.py) against PEFT's own forward on a tiny random Llama with the
real tokenizer: the same loss, accuracy and LoRA gradients (with and without gradient checkpointing),
dropout applied in training only, no second copy of the frozen weights, and PEFT's forward whenever the
model is not eligible or its weights were replaced."""

from __future__ import annotations

import pytest
import torch

from tunegate.train.config import TrainConfig
from tunegate.train.lora import Precision, build_model, forward_loss
from tunegate.train.packing import pack

CPU = Precision(torch.device("cpu"), None)


def _config(path, **kw):
    return TrainConfig(
        base_model="tiny",
        base_model_path=str(path),
        template_sha256="t",
        training_file="x",
        **({"lora_dropout": 0.0} | kw),
    )


@pytest.fixture(scope="module")
def row(tokenizer):
    from tunegate.catalog.template import tokenize_examples

    chats = [
        [{"role": "user", "content": f"Count to {i}."}, {"role": "assistant", "content": " ".join(map(str, range(i)))}]
        for i in (3, 9, 5)
    ]
    chats[1] = [{"role": "system", "content": "Be brief."}, *chats[1]]
    return pack([(e.input_ids, e.loss_mask) for e in tokenize_examples(tokenizer, chats)])


def _model(path, **kw):
    model = build_model(_config(path, **kw), CPU)
    with torch.no_grad():  # non-zero LoRA B, so every adapter weight gets a gradient
        g = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _loss_and_grads(model, row, fused: bool):
    plan = model.tunegate_fused
    if not fused:
        model.tunegate_fused = None
    try:
        model.zero_grad(set_to_none=True)
        loss, stats = forward_loss(model, row, CPU)
        loss.backward()
    finally:
        model.tunegate_fused = plan
    return (
        float(loss.detach()),
        stats.correct,
        {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad},
    )


@pytest.mark.parametrize("checkpointing", [False, True])
def test_fused_forward_equals_peft_loss_and_gradients(tiny_model_path, row, checkpointing):
    model = _model(tiny_model_path, gradient_checkpointing=checkpointing)
    assert model.tunegate_fused is not None
    model.train()
    loss_f, correct_f, grads_f = _loss_and_grads(model, row, fused=True)
    loss_p, correct_p, grads_p = _loss_and_grads(model, row, fused=False)
    assert loss_f == pytest.approx(loss_p, rel=1e-5)
    assert correct_f == correct_p
    assert grads_f.keys() == grads_p.keys() and len(grads_f) == 2 * 7 * 2  # A and B, 7 modules, 2 layers
    for n in grads_f:
        assert grads_f[n].abs().sum() > 0, n
        torch.testing.assert_close(grads_f[n], grads_p[n], rtol=1e-4, atol=1e-6, msg=n)


def test_fused_forward_dropout_in_training_only(tiny_model_path, row):
    model = _model(tiny_model_path, lora_dropout=0.3)
    model.eval()
    with torch.no_grad():
        eval_fused, _ = forward_loss(model, row, CPU)
        model.tunegate_fused, plan = None, model.tunegate_fused
        eval_peft, _ = forward_loss(model, row, CPU)
        model.tunegate_fused = plan
    assert float(eval_fused) == pytest.approx(float(eval_peft), rel=1e-5)
    model.train()
    torch.manual_seed(0)
    first, _ = forward_loss(model, row, CPU)
    torch.manual_seed(1)
    second, _ = forward_loss(model, row, CPU)
    assert float(first) != float(second) != float(eval_fused)


def test_frozen_weights_are_shared_not_copied(tiny_model_path):
    model = _model(tiny_model_path)
    layer = model.get_base_model().model.layers[0]
    qkv = model.tunegate_fused.layers[0].qkv.weight
    q, k, v = (getattr(layer.self_attn, n).base_layer.weight for n in ("q_proj", "k_proj", "v_proj"))
    assert qkv.data_ptr() == q.data_ptr() and qkv[q.shape[0]].data_ptr() == k.data_ptr()
    assert qkv[q.shape[0] + k.shape[0]].data_ptr() == v.data_ptr()
    assert torch.equal(qkv, torch.cat([q, k, v]))


@pytest.mark.parametrize("replaced", ["up_proj", "down_proj"])  # one of a fused pair, and a lone projection
def test_replaced_weights_fall_back_to_peft(tiny_model_path, row, replaced):
    model = _model(tiny_model_path)
    model.eval()
    with torch.no_grad():
        before, _ = forward_loss(model, row, CPU)
        linear = getattr(model.get_base_model().model.layers[1].mlp, replaced).base_layer
        linear.weight.data = torch.randn(linear.weight.shape)  # a fresh tensor: the fused weights are stale
        assert not model.tunegate_fused.intact()
        after, _ = forward_loss(model, row, CPU)
        model.tunegate_fused, plan = None, model.tunegate_fused
        peft, _ = forward_loss(model, row, CPU)
        model.tunegate_fused = plan
    assert float(after) == pytest.approx(float(peft), rel=1e-6)
    assert float(after) != pytest.approx(float(before), rel=1e-6)


def test_lora_on_some_projections_uses_peft_forward(tiny_model_path):
    assert _model(tiny_model_path, target_modules=("q_proj", "v_proj")).tunegate_fused is None


def test_dropout_rate_scale_and_gradient():
    from tunegate.train.fused import _dropout

    torch.manual_seed(0)
    x = torch.ones(1000, 257, requires_grad=True)  # an odd size: the last 64-bit draw is partly used
    y = _dropout(x, 0.05)
    dropped = y == 0
    assert abs(float(dropped.float().mean()) - 0.05) < 0.003
    assert float(y[~dropped].unique().item()) == pytest.approx(1 / (1 - 1638 / 32768))  # p rounded to 1/32768
    y.sum().backward()
    assert torch.equal(x.grad == 0, dropped)
    torch.manual_seed(0)
    assert torch.equal(_dropout(x, 0.05) == 0, dropped)  # seeded like torch's own dropout


def test_head_cross_entropy_in_chunks_equals_the_plain_loss(monkeypatch):
    from tunegate.train import fused

    monkeypatch.setattr(fused, "_HEAD_CHUNK_ENTRIES", 20 * 1000)  # chunks of 20 positions: 5 of them, the last short
    g = torch.Generator().manual_seed(0)
    h = torch.randn(97, 16, generator=g, requires_grad=True)
    weight = torch.randn(1000, 16, generator=g)
    targets = torch.randint(0, 1000, (97,), generator=g)
    losses, correct = fused._HeadCrossEntropy.apply(h, weight, targets)
    # Each position weighted differently upstream (as DPO's per-sequence sums are): its own gradient scaled.
    scale = torch.linspace(-1, 2, 97)
    (scale * losses).sum().backward()
    h_ref = h.detach().clone().requires_grad_()
    logits = h_ref @ weight.T
    ref = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    (scale * ref).sum().backward()
    torch.testing.assert_close(losses, ref.detach(), rtol=1e-5, atol=1e-5)
    assert int(correct) == int((logits.argmax(-1) == targets).sum())
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-4, atol=1e-6)


def test_fused_forward_under_bf16_autocast_matches_peft(tiny_model_path, row):
    bf16 = Precision(torch.device("cpu"), torch.bfloat16)
    model = _model(tiny_model_path)
    model.train()
    fused, _ = forward_loss(model, row, bf16)
    fused.backward()
    model.tunegate_fused, plan = None, model.tunegate_fused
    peft, _ = forward_loss(model, row, bf16)
    model.tunegate_fused = plan
    assert float(fused.detach()) == pytest.approx(float(peft.detach()), rel=2e-2)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
