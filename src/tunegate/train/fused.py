"""A fused training forward for LoRA on Llama-architecture models: PEFT's loss, fewer passes over memory.

Owns `fuse(model)`, run once after PEFT wraps the base, and `fused_loss(plan, row, training)`, the
forward the SFT recipe uses when `fuse` found the model eligible. The parameters stay PEFT's own
(`lora_A`/`lora_B` of every target module), so checkpoints, serving and DPO/RFT, which call the
PEFT model directly, see no difference. Any other model, or LoRA on a subset of the projections,
trains through PEFT's forward (lora.py).

What it does differently from PEFT's forward, and why (bench/train.py has the figures):
- q/k/v are one matmul against their frozen weights concatenated once, and so are gate/up; the
  PEFT modules' base weights become views of the concatenation, so it costs no memory. Their
  LoRA deltas are one `x @ [A_q; A_k; A_v]^T` and one block-diagonal matmul added in place.
- the adapters of one fused input share one dropout mask (PEFT keeps one per module), drawn
  twice as fast as torch's dropout. That is
  what PEFT itself does on models whose q/k/v are one layer (Phi-3's `qkv_proj`); with
  `lora_dropout` 0, or in evaluation, the loss and gradients equal PEFT's to float rounding
  (tests/unit/test_train_fused.py).
- rotary embeddings are applied to q and k in one pass, RMSNorm is torch's fused kernel.
- the final norm, the LM head and the cross-entropy run only at the trained positions, in chunks,
  with the gradient of the (frozen) head's input computed in the same pass: the
  (positions x vocabulary) logits are never kept for backward, which is most of a step's peak
  memory at a 49k vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunegate.train.packing import PackedRow, packed_attention_forward

FUSED_TYPES = ("llama",)
_PROJECTIONS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("self_attn", ("o_proj",)))
_MLP = (("mlp", ("gate_proj", "up_proj")), ("mlp", ("down_proj",)))
# Logits of this many (position, vocabulary) entries at a time: 16 MiB in fp32, under glibc's largest
# mmap threshold (32 MiB), so each chunk reuses heap memory instead of being mapped and faulted in anew.
_HEAD_CHUNK_ENTRIES = 1 << 22


@dataclass
class _Projection:
    """Frozen weights of one or more LoRA-wrapped linears with the same input, concatenated."""

    weight: torch.Tensor  # (sum of out features, in features); the members' base weights are views of it
    members: list  # PEFT LoRA Linear modules, in output order
    scale: float
    dropout: float

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        out = x @ self.weight.T
        xd = _dropout(x, self.dropout) if training and self.dropout else x
        a = [m.lora_A["default"].weight for m in self.members]
        b = [m.lora_B["default"].weight for m in self.members]
        xa = xd @ (a[0] if len(a) == 1 else torch.cat(a)).T
        # x @ [A_1; A_2]^T @ blockdiag(B_1, B_2)^T == [x A_1^T B_1^T, x A_2^T B_2^T]: one matmul for all deltas.
        b_t = (b[0] if len(b) == 1 else torch.block_diag(*b)).T
        # In place, so autocast leaves it alone: match the (autocast) dtype of the base output by hand.
        return out.addmm_(xa.to(out.dtype), b_t.to(out.dtype), alpha=self.scale)

    def intact(self) -> bool:
        """False once something replaced a member's base weight (the concatenation would be stale)."""
        offset = 0
        for m in self.members:
            w = m.base_layer.weight
            if w.data_ptr() != self.weight[offset].data_ptr():
                return False
            offset += w.shape[0]
        return True


@dataclass
class _Layer:
    module: torch.nn.Module  # the decoder layer (norm weights, attention settings)
    qkv: _Projection
    o: _Projection
    gate_up: _Projection
    down: _Projection


@dataclass
class FusedPlan:
    model: torch.nn.Module  # the PEFT model
    layers: list[_Layer]
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    checkpointing: bool

    def intact(self) -> bool:
        return all(p.intact() for layer in self.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down))


def fuse(model, gradient_checkpointing: bool = False) -> FusedPlan | None:
    """The fused forward's plan for a PEFT LoRA model, or None when the model must use PEFT's forward."""
    from peft.tuners.lora import Linear as LoraLinear

    base = model.get_base_model()
    config = base.config
    eligible = (
        config.model_type in FUSED_TYPES
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
        and getattr(config, "hidden_act", "silu") == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
        and not getattr(base, "is_quantized", False)
        and list(model.peft_config) == ["default"]
        and type(base.lm_head) is torch.nn.Linear  # not adapted: its frozen weight is all the head is
        and base.lm_head.bias is None
    )
    if not eligible:
        return None
    layers = []
    for layer in base.model.layers:
        groups = []
        for owner, names in (*_PROJECTIONS, *_MLP):
            members = [getattr(getattr(layer, owner), name) for name in names]
            if not all(_plain_lora(m, LoraLinear) for m in members):
                return None
            groups.append(members)
        layers.append((layer, groups))
    plan_layers = [_Layer(layer, *(_concatenate(members) for members in groups)) for layer, groups in layers]
    return FusedPlan(
        model=model,
        layers=plan_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads or config.num_attention_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        intermediate=config.intermediate_size,
        checkpointing=gradient_checkpointing,
    )


def _plain_lora(module, lora_linear) -> bool:
    return (
        isinstance(module, lora_linear)
        and module.active_adapters == ["default"]
        and not module.use_dora.get("default", False)
        and not module.fan_in_fan_out
        and module.base_layer.bias is None
        and not module.merged
        and not getattr(module, "lora_bias", {}).get("default", False)
    )


def _concatenate(members) -> _Projection:
    weights = [m.base_layer.weight for m in members]
    weight = weights[0].detach() if len(weights) == 1 else torch.cat([w.detach() for w in weights])
    offset = 0
    for w in weights:  # the PEFT modules now read the same memory: no second copy of the base
        w.data = weight[offset : offset + w.shape[0]]
        offset += w.shape[0]
    dropout = members[0].lora_dropout["default"]
    return _Projection(
        weight=weight,
        members=list(members),
        scale=float(members[0].scaling["default"]),
        dropout=float(dropout.p) if isinstance(dropout, torch.nn.Dropout) else 0.0,
    )


def _dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout with `p` rounded to 1/32768, from 15 random bits per element.

    torch's dropout draws one random number per element; four 16-bit lanes of one 64-bit draw
    make the mask about twice as fast on CPU, and this runs on every adapter input of every layer.
    Backward keeps only the boolean mask, as torch's dropout does.
    """
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
    lanes = bits.view(torch.int16)[:n].view(x.shape) & 0x7FFF  # the top lane has 15 random bits: use 15 in all
    dropped = round(p * 32768)
    return torch.where(lanes >= dropped, x * (32768 / (32768 - dropped)), 0.0)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _decoder_layer(plan: FusedPlan, layer: _Layer, x, cos, sin, cu_seq_lens, training: bool):
    """One decoder layer on a packed row of T tokens: x (T, hidden) -> (T, hidden)."""
    m, attn = layer.module, layer.module.self_attn
    n_tokens, hq, hkv, hd = x.shape[0], plan.n_heads, plan.n_kv_heads, plan.head_dim
    h = F.rms_norm(x, x.shape[-1:], m.input_layernorm.weight, m.input_layernorm.variance_epsilon)
    qkv = layer.qkv(h, training).view(n_tokens, hq + 2 * hkv, hd)
    qk = qkv[:, : hq + hkv]
    qk = qk * cos + _rotate_half(qk) * sin  # q and k rotated together
    q = qk[:, :hq].transpose(0, 1).unsqueeze(0)
    k = qk[:, hq:].transpose(0, 1).unsqueeze(0)
    v = qkv[:, hq + hkv :].transpose(0, 1).unsqueeze(0)
    dropout = attn.attention_dropout if training else 0.0
    out, _ = packed_attention_forward(
        attn, q, k, v, None, dropout=dropout, scaling=attn.scaling, cu_seq_lens_q=cu_seq_lens
    )
    x = x + layer.o(out.view(n_tokens, hq * hd), training)
    h = F.rms_norm(x, x.shape[-1:], m.post_attention_layernorm.weight, m.post_attention_layernorm.variance_epsilon)
    gate, up = layer.gate_up(h, training).split(plan.intermediate, dim=-1)
    return x + layer.down(F.silu(gate) * up, training)


class _HeadCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `h @ weight^T` against `targets` at every position, and the count of correct argmaxes.

    The head is frozen, so the only gradient is the one of `h`; it is computed chunk by chunk in the
    forward pass (softmax minus one-hot, times the head) while each chunk's logits are at hand, and
    the logits are never kept. Backward only scales each position's row by its upstream gradient, so
    a summed loss (SFT) and per-sequence sums weighted differently (DPO) both cost the same.
    """

    @staticmethod
    def forward(ctx, h, weight, targets):
        losses = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        correct = torch.zeros((), dtype=torch.long, device=h.device)
        grad = torch.empty(h.shape, dtype=torch.float32, device=h.device) if ctx.needs_input_grad[0] else None
        chunk = max(16, _HEAD_CHUNK_ENTRIES // weight.shape[0])
        w = weight.float()
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, h.shape[0], chunk):
                logits = h[s : s + chunk].float() @ w.T
                t = targets[s : s + chunk]
                lse = torch.logsumexp(logits, dim=-1)
                torch.sub(lse, logits.gather(1, t[:, None]).squeeze(1), out=losses[s : s + chunk])
                correct += (logits.argmax(-1) == t).sum()
                if grad is not None:
                    probs = logits.sub_(lse[:, None]).exp_()
                    probs[torch.arange(t.shape[0], device=t.device), t] -= 1
                    torch.mm(probs, w, out=grad[s : s + chunk])
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(correct)
        ctx.input_dtype = h.dtype
        return losses, correct

    @staticmethod
    def backward(ctx, grad_losses, _grad_correct):
        (grad,) = ctx.saved_tensors
        return (grad * grad_losses[:, None]).to(ctx.input_dtype), None, None


def fused_token_losses(plan: FusedPlan, row: PackedRow, device: torch.device, training: bool):
    """(cross-entropy at each trained position, in the row's order; number of correct argmax predictions).

    Runs the trained adapter ("default") whatever adapter PEFT has active: never use it for a reference pass."""
    from torch.utils.checkpoint import checkpoint

    base = plan.model.get_base_model()
    ids = row.input_ids.to(device)
    positions = row.position_ids.to(device)
    cu_seq_lens = row.cu_seq_lens.to(device)
    x = base.model.embed_tokens(ids)[0]
    cos, sin = base.model.rotary_emb(x, positions)
    cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # (T, 1, head_dim): broadcast over heads
    for layer in plan.layers:
        if plan.checkpointing and training:
            x = checkpoint(_decoder_layer, plan, layer, x, cos, sin, cu_seq_lens, training, use_reentrant=False)
        else:
            x = _decoder_layer(plan, layer, x, cos, sin, cu_seq_lens, training)
    norm = base.model.norm
    h = x[row.logit_positions[0].to(device)]
    h = F.rms_norm(h, h.shape[-1:], norm.weight, norm.variance_epsilon)
    return _HeadCrossEntropy.apply(h, base.lm_head.weight, row.targets.to(device))


def fused_loss(plan: FusedPlan, row: PackedRow, device: torch.device, training: bool):
    """(summed loss over the trained positions, number of correct argmax predictions)."""
    losses, correct = fused_token_losses(plan, row, device, training)
    return losses.sum(), correct


def packed_token_logps(model, row: PackedRow, device: torch.device, *, policy: bool = False) -> torch.Tensor:
    """Log-probability of each trained token of a packed row, in the row's order.

    `policy`: the trained adapter's pass (DPO's and RFT's policy), which takes the fused forward where
    `fuse` found the model eligible; every other pass (a reference) goes through PEFT's forward,
    which honours the adapter switch of `lora.reference_policy`."""
    plan = getattr(model, "tunegate_fused", None) if policy else None
    if plan is not None and plan.intact():
        losses, _ = fused_token_losses(plan, row, device, model.training)
        return -losses
    logits = model(**row.model_inputs(device)).logits
    logits = logits.reshape(-1, logits.shape[-1]).float()
    # cross_entropy is -log softmax at the target without materialising the whole log-softmax.
    return -F.cross_entropy(logits, row.targets.to(device), reduction="none")
