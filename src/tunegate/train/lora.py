"""The trainable model: a frozen base with PEFT LoRA adapters, on the right device and precision.

Owns loading the base model for training (with the packed attention of packing.py), wrapping it
with LoRA from the config, restoring adapter weights from a checkpoint, and the one forward pass
the recipe uses (loss and accuracy on the trained positions only). Does not own saving or
exporting adapters (registry/).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tunegate.catalog import load_pretrained
from tunegate.train.config import DEFAULT_TARGET_MODULES, TrainConfig
from tunegate.train.fused import fuse, fused_loss
from tunegate.train.packing import PACKED_ATTENTION, PackedRow


@dataclass(frozen=True)
class Precision:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def choose_precision(config: TrainConfig) -> Precision:
    """fp32 on CPU (bf16 matmuls are half as fast there without AMX); bf16 autocast on CUDA."""
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        from tunegate.errors import InvalidRequestError

        raise InvalidRequestError(
            '`device` is "cuda" but this worker has no CUDA GPU; use "auto" or "cpu".',
            param="device",
            code="invalid_training_config",
        )
    device = torch.device(
        "cuda" if config.device == "auto" and cuda else "cpu" if config.device == "auto" else config.device
    )
    if config.dtype == "bfloat16" or (
        config.dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    ):
        return Precision(device, torch.bfloat16)
    return Precision(device, None)


def require_qlora(param: str = "quantization") -> None:
    """QLoRA needs a CUDA GPU and bitsandbytes; anything else is a clear 400, never a crash mid-job."""
    from tunegate.errors import InvalidRequestError

    if not torch.cuda.is_available():
        raise InvalidRequestError(
            f'`{param}` "nf4" (QLoRA) needs a CUDA GPU and this server has none; leave it unset '
            "to train LoRA on the full-precision base.",
            param=param,
            code="quantization_unavailable",
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise InvalidRequestError(
            f"`{param}` \"nf4\" (QLoRA) needs the `bitsandbytes` package on the server: pip install 'tunegate[gpu]'.",
            param=param,
            code="quantization_unavailable",
        ) from None


def build_model(config: TrainConfig, precision: Precision):
    """The base model with fresh LoRA adapters; LoRA init depends only on the config's seed."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if config.quantization == "nf4":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        require_qlora()
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        base = load_pretrained(
            AutoModelForCausalLM,
            config.base_model_path,
            dtype=torch.bfloat16,
            attn_implementation=PACKED_ATTENTION,
            quantization_config=quant,
            device_map={"": precision.device},
        )
        base = prepare_model_for_kbit_training(
            base,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        base = load_pretrained(
            AutoModelForCausalLM, config.base_model_path, dtype=torch.float32, attn_implementation=PACKED_ATTENTION
        )
        if config.gradient_checkpointing:
            # Recompute each layer's activations in backward: memory per token drops to ~one layer's worth.
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.config.use_cache = False
    targets = list(config.target_modules)
    if config.target_modules == DEFAULT_TARGET_MODULES:
        # Phi 3/4 fuse q/k/v into qkv_proj and gate/up into gate_up_proj: the default trains those too.
        names = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
        targets += [fused for fused in ("qkv_proj", "gate_up_proj") if fused in names]
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(config.seed)
    try:
        model = get_peft_model(base, lora)
    except ValueError as exc:  # PEFT names the missing modules
        from tunegate.errors import InvalidRequestError

        raise InvalidRequestError(
            f"LoRA `target_modules` do not fit this base model: {exc}",
            param="target_modules",
            code="invalid_training_config",
        ) from exc
    if config.init_adapter:  # continued fine-tuning: the parent's LoRA weights are the starting point
        load_adapter_weights(model, Path(config.init_adapter))
    if config.quantization:
        return model
    model = model.to(precision.device)
    # After the move: the fused forward concatenates the frozen weights where they will live (fused.py).
    model.tunegate_fused = fuse(model, config.gradient_checkpointing)
    return model


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure under a memory limit (a plain RuntimeError)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


def fit_micro_batch_tokens(free_bytes: int, config, n_layers: int, hidden: int, vocab: int) -> int:
    """Tokens per micro-batch that fit `free_bytes` with room to spare (CUDA only; OOM retry is the safety net).

    Per token and layer about 34 x hidden bytes of bf16 activations are kept for backward (Korthikanti et al.
    2022, flash attention: no seq^2 term), one layer's worth with gradient checkpointing; plus fp32 logits and
    their gradient over the vocabulary at trained positions (at most every token)."""
    per_token = 34 * hidden * (1 if config.gradient_checkpointing else n_layers) + 8 * vocab
    fitted = int(0.6 * free_bytes / per_token)
    return max(256, min(65_536, 1 << max(fitted, 1).bit_length() - 1))


def load_adapter_weights(model, adapter_dir: Path) -> None:
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    weights = load_peft_weights(str(adapter_dir), device=str(next(model.parameters()).device))
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"Checkpoint {adapter_dir} does not match the LoRA config: {result.unexpected_keys[:3]}")


# DPO and reinforcement from an `ft:` parent: the parent's adapter, loaded a second time under this name
# and frozen, is the reference policy; the trained ("default") adapter starts as a copy of it.
REFERENCE_ADAPTER = "reference"


def load_reference_adapter(model, adapter_dir: Path) -> None:
    """Add the parent adapter, frozen, beside the trained one on the same base (no second base model)."""
    device = str(next(model.parameters()).device)
    model.load_adapter(str(adapter_dir), adapter_name=REFERENCE_ADAPTER, is_trainable=False, torch_device=device)
    model.set_adapter("default")  # the trained adapter stays the active, trainable one


@contextmanager
def reference_policy(model):
    """Forward passes inside run the reference policy: the frozen parent adapter when one is loaded, else
    the base with the adapter switched off. In eval mode, so LoRA dropout never perturbs the reference;
    callers wrap it in torch.no_grad()."""
    was_training = model.training
    model.eval()
    try:
        if REFERENCE_ADAPTER in model.peft_config:
            model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
            try:
                yield
            finally:
                model.set_adapter("default")  # also makes the trained adapter's weights require grad again
        else:
            with model.disable_adapter():
                yield
    finally:
        model.train(was_training)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class StepStats:
    """Sums over loss positions, so micro-batches and epochs add up exactly."""

    loss_sum: float = 0.0
    correct: int = 0
    n_loss: int = 0
    n_tokens: int = 0

    def add(self, other: StepStats) -> None:
        self.loss_sum += other.loss_sum
        self.correct += other.correct
        self.n_loss += other.n_loss
        self.n_tokens += other.n_tokens

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.n_loss, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.n_loss, 1)


def forward_loss(model, row: PackedRow, precision: Precision) -> tuple[torch.Tensor, StepStats]:
    """Summed cross-entropy over the trained positions, computing the LM head only there.

    The vocabulary is large (49,152 for SmolLM2), so projecting only the trained positions
    (`logits_to_keep` as a boolean mask) gives the exact same loss about 1.4x faster on CPU.
    Llama-architecture models take the fused forward of fused.py (same loss, faster, less memory).
    """
    plan = getattr(model, "tunegate_fused", None)
    if plan is not None and plan.intact():
        with precision.autocast():
            loss_sum, correct = fused_loss(plan, row, precision.device, model.training)
        return loss_sum, StepStats(float(loss_sum.detach()), int(correct), row.n_loss, row.n_tokens)
    with precision.autocast():
        logits = model(**row.model_inputs(precision.device)).logits
    targets = row.targets.to(precision.device)
    logits = logits.reshape(-1, logits.shape[-1]).float()
    loss_sum = F.cross_entropy(logits, targets, reduction="sum")
    with torch.no_grad():
        correct = int((logits.argmax(-1) == targets).sum())
    return loss_sum, StepStats(float(loss_sum.detach()), correct, row.n_loss, row.n_tokens)
