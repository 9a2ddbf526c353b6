"""The frozen training config and the documented "auto" hyperparameter rules.

Owns `TrainConfig` (one frozen dataclass, saved as meta.json beside every checkpoint and adapter)
and `resolve_hyperparameters`, which turns the job's `"auto"`/number hyperparameters into
numbers, and `HYPERPARAMETER_BOUNDS`, the ranges of those numbers that the jobs API checks too.
Does not own training itself.

The "auto" rules (also in the README):

- `n_epochs`: OpenAI's rule (`tunegate.files.tokens.auto_n_epochs`): 3, raised or lowered so that
  examples x epochs lies in 100..25,000, within 1..25.
- `batch_size`: the largest power of two not above n_examples / 10 (so an epoch has about ten
  optimizer steps or more), within 1..32, and at most ~64k tokens per batch when the token count
  is known.
- `learning_rate`: `BASE_LEARNING_RATE` (2e-4, a usual LoRA SFT rate at batch size 8) times the
  multiplier; the "auto" multiplier is sqrt(batch_size / 8) within 0.5..2 (Adam's square-root
  scaling with batch size). DPO starts from `DPO_BASE_LEARNING_RATE` (5e-5): its loss keeps
  pushing the margin apart after the preferred answer is already likelier, so it overshoots
  sooner than SFT at the same rate.
- `beta` (DPO): 0.1, the DPO paper's value; "auto" means 0.1.
- `n_epochs` and `batch_size` for DPO count preference pairs, by the same rules.
- Reinforcement: `n_epochs` and `learning_rate_multiplier` as SFT (from `RFT_BASE_LEARNING_RATE`,
  1e-4: sampled answers are noisier targets than demonstrations); `batch_size` (prompts per step)
  as SFT but at most 8, since every prompt costs a group of sampled answers; `compute_multiplier`
  scales the answers sampled per prompt, 4 x multiplier within 2..64 ("auto": 4);
  `eval_interval` "auto" checks the held-out reward at each epoch's end; `eval_samples` "auto" is
  one greedy answer per held-out prompt (more: that many sampled answers, averaged);
  `reasoning_effort` only "default" (the base models here have no reasoning mode).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from tunegate.errors import InvalidRequestError
from tunegate.files.tokens import auto_n_epochs as files_auto_n_epochs

BASE_LEARNING_RATE = 2e-4
DPO_BASE_LEARNING_RATE = 5e-5
RFT_BASE_LEARNING_RATE = 1e-4
RFT_MAX_AUTO_BATCH = 8
RFT_BASE_GROUP = 4
DEFAULT_BETA = 0.1
METHODS = ("supervised", "dpo", "reinforcement")
# SmolLM2 is a Llama: LoRA on every projection of attention and MLP trains best for its size.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_DEVICES = ("auto", "cpu", "cuda")
_DTYPES = ("auto", "float32", "bfloat16")
_SCHEDULERS = ("linear", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Numbers here are resolved: no "auto"."""

    base_model: str
    base_model_path: str
    template_sha256: str
    training_file: str
    validation_file: str | None = None
    n_epochs: int = 3
    batch_size: int = 8
    learning_rate: float = BASE_LEARNING_RATE
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    max_seq_len: int | None = None  # None: the base model's context length
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler: str = "linear"  # decay to 0 after warmup: "linear" or "cosine"
    keep_checkpoints: int = 3
    micro_batch_tokens: int = 4096  # tokens per forward pass; accumulation fills batch_size
    eval_batch_size: int | None = None  # examples in the per-step validation batch; None: batch_size
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    dtype: str = "auto"  # "auto" (fp32 on CPU, bf16 autocast on CUDA) | "float32" | "bfloat16"
    num_threads: int | None = None  # torch intra-op threads; None: leave the process default
    method: str = "supervised"  # "supervised" (recipe.py) | "dpo" (dpo.py) | "reinforcement" (rft.py)
    beta: float = DEFAULT_BETA  # DPO: how far the policy may move from the reference (adapter off)
    rft_group_size: int = 4  # reinforcement: answers sampled per prompt (advantages are normalised within)
    rft_max_tokens: int = 64  # reinforcement: longest sampled answer
    rft_kl_coef: float = 0.04  # reinforcement: weight of the KL to the adapter-off model
    rft_eval_interval: int | None = None  # reinforcement: steps between held-out reward checks; None: epoch ends
    rft_eval_samples: int = 1  # reinforcement: answers per held-out prompt (1: greedy; more: sampled, averaged)
    init_adapter: str | None = None  # continued fine-tuning: the parent adapter folder whose weights start training
    parent_model: str | None = None  # continued fine-tuning: the `ft:` model or checkpoint it came from (lineage)
    # GPU options (train/lora.py): a 4-bit NF4 base (QLoRA, CUDA + bitsandbytes only) and activation recompute.
    quantization: str | None = None  # None | "nf4"
    gradient_checkpointing: bool = False

    @staticmethod
    def base_learning_rate() -> float:
        return BASE_LEARNING_RATE

    def __post_init__(self) -> None:
        # Values come from JSON (lists, None seeds); normalise so equal configs compare equal.
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "seed", int(self.seed) if self.seed is not None else 0)
        problems = []

        def need(ok: bool, name: str, fix: str) -> None:
            if not ok:
                problems.append((name, fix))

        need(self.n_epochs >= 1, "n_epochs", "use an integer of at least 1")
        need(self.batch_size >= 1, "batch_size", "use an integer of at least 1")
        need(self.learning_rate > 0, "learning_rate", "use a positive number")
        need(self.lora_r >= 1, "lora_r", "use an integer of at least 1 (16 is a good default)")
        need(self.lora_alpha > 0, "lora_alpha", "use a positive number (usually 2 x lora_r)")
        need(0 <= self.lora_dropout < 1, "lora_dropout", "use a number in [0, 1)")
        need(len(self.target_modules) > 0, "target_modules", f"name modules such as {list(DEFAULT_TARGET_MODULES)}")
        need(self.max_seq_len is None or self.max_seq_len >= 16, "max_seq_len", "use at least 16 tokens, or null")
        need(0 <= self.warmup_ratio < 1, "warmup_ratio", "use a number in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "use a number >= 0")
        need(self.max_grad_norm > 0, "max_grad_norm", "use a positive number")
        need(self.lr_scheduler in _SCHEDULERS, "lr_scheduler", f"use one of {list(_SCHEDULERS)}")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "keep at least 1 checkpoint")
        need(self.micro_batch_tokens >= 16, "micro_batch_tokens", "use at least 16 tokens")
        need(self.eval_batch_size is None or self.eval_batch_size >= 1, "eval_batch_size", "use at least 1, or null")
        need(self.device in _DEVICES, "device", f"use one of {list(_DEVICES)}")
        need(self.dtype in _DTYPES, "dtype", f"use one of {list(_DTYPES)}")
        need(self.num_threads is None or self.num_threads >= 1, "num_threads", "use at least 1, or null")
        need(self.method in METHODS, "method", f"use one of {list(METHODS)}")
        need(0 < self.beta <= 2, "beta", "use a number above 0 and at most 2 (0.1 is the usual value)")
        need(2 <= self.rft_group_size <= 64, "rft_group_size", "use 2..64 answers per prompt")
        need(1 <= self.rft_max_tokens <= 4096, "rft_max_tokens", "use 1..4096 tokens")
        need(self.rft_kl_coef >= 0, "rft_kl_coef", "use a number >= 0")
        need(self.rft_eval_interval is None or self.rft_eval_interval >= 1, "rft_eval_interval", "use at least 1")
        need(1 <= self.rft_eval_samples <= 64, "rft_eval_samples", "use 1..64 answers per held-out prompt")
        need(self.quantization in (None, "nf4"), "quantization", 'use "nf4" (QLoRA) or null')
        if problems:
            text = "; ".join(f"`{name}` is invalid: {fix}" for name, fix in problems)
            raise InvalidRequestError(
                f"Invalid training configuration: {text}.", param=problems[0][0], code="invalid_training_config"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def auto_n_epochs(n_examples: int) -> int:
    return int(files_auto_n_epochs(n_examples))


def auto_batch_size(n_examples: int, n_tokens: int | None = None) -> int:
    batch = 1
    while batch * 2 <= min(32, n_examples / 10):
        batch *= 2
    if n_tokens and n_examples:
        mean_len = n_tokens / n_examples
        while batch > 1 and batch * mean_len > 65_536:
            batch //= 2
    return batch


def auto_learning_rate_multiplier(batch_size: int) -> float:
    return min(2.0, max(0.5, math.sqrt(batch_size / 8)))


@dataclass(frozen=True)
class Bound:
    """The range of a job hyperparameter; the API schema (jobs/schemas.py) and the trainer both check it."""

    kind: type
    low: float
    high: float
    low_open: bool = False  # the range excludes `low` itself

    def contains(self, value: float) -> bool:
        return (self.low < value if self.low_open else self.low <= value) and value <= self.high

    def describe(self) -> str:
        if self.kind is int:
            return f"an integer from {self.low:g} to {self.high:g}"
        return f"a number {'above' if self.low_open else 'from'} {self.low:g} {'and at most' if self.low_open else 'to'} {self.high:g}"


HYPERPARAMETER_BOUNDS: dict[str, Bound] = {
    "n_epochs": Bound(int, 1, 50),
    "batch_size": Bound(int, 1, 256),
    "learning_rate_multiplier": Bound(float, 0, 10, low_open=True),
}


def _number(value: Any, param: str, name: str) -> Any:
    bound = HYPERPARAMETER_BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f'`{param}` must be "auto" or a number, got {value!r}.', param=param)
    if bound.kind is int and float(value) != int(value):
        raise InvalidRequestError(f"`{param}` must be a whole number, got {value!r}.", param=param)
    if not bound.contains(value):
        raise InvalidRequestError(f'`{param}` must be "auto" or {bound.describe()}, got {value!r}.', param=param)
    return bound.kind(value)


def resolve_hyperparameters(
    n_epochs: Any = "auto",
    batch_size: Any = "auto",
    learning_rate_multiplier: Any = "auto",
    *,
    n_examples: int,
    n_tokens: int | None = None,
    method: str = "supervised",
) -> tuple[int, int, float]:
    """(n_epochs, batch_size, learning_rate) from the job's hyperparameters, each "auto" or a number."""
    prefix = f"method.{method}.hyperparameters."
    base_rate = base_learning_rate(method)
    if n_epochs == "auto" or n_epochs is None:
        n_epochs = auto_n_epochs(n_examples)
    else:
        n_epochs = _number(n_epochs, prefix + "n_epochs", "n_epochs")
    if batch_size == "auto" or batch_size is None:
        batch_size = auto_batch_size(n_examples, n_tokens)
        if method == "reinforcement":
            batch_size = min(batch_size, RFT_MAX_AUTO_BATCH)
    else:
        batch_size = _number(batch_size, prefix + "batch_size", "batch_size")
    if learning_rate_multiplier == "auto" or learning_rate_multiplier is None:
        multiplier = auto_learning_rate_multiplier(batch_size)
    else:
        multiplier = _number(learning_rate_multiplier, prefix + "learning_rate_multiplier", "learning_rate_multiplier")
    return n_epochs, batch_size, base_rate * multiplier


def base_learning_rate(method: str) -> float:
    return {"dpo": DPO_BASE_LEARNING_RATE, "reinforcement": RFT_BASE_LEARNING_RATE}.get(method, BASE_LEARNING_RATE)


def resolve_reinforcement(hp: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields from `method.reinforcement.hyperparameters` beyond epochs, batch and rate."""
    prefix = "method.reinforcement.hyperparameters."

    def pick(name: str, kind: type, low: float, high: float, default: Any) -> Any:
        value = hp.get(name, "auto")
        if value == "auto" or value is None:
            return default
        whole = kind is int and not isinstance(value, bool) and isinstance(value, (int, float)) and value == int(value)
        ok = whole if kind is int else isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not low <= value <= high:
            raise InvalidRequestError(
                f'`{prefix}{name}` must be "auto" or a{"n integer" if kind is int else " number"} from {low:g} '
                f"to {high:g}, got {value!r}.",
                param=prefix + name,
            )
        return kind(value)

    multiplier = pick("compute_multiplier", float, 0.5, 16, 1.0)
    effort = hp.get("reasoning_effort", "default")
    if effort not in ("default", "auto", None):
        raise InvalidRequestError(
            f"`{prefix}reasoning_effort` {effort!r} is not supported: the base models here have no reasoning "
            'mode. Leave it out or use "default".',
            param=prefix + "reasoning_effort",
            code="unsupported_parameter",
        )
    return {
        "rft_group_size": min(64, max(2, round(RFT_BASE_GROUP * multiplier))),
        "rft_eval_interval": pick("eval_interval", int, 1, 10_000, None),
        "rft_eval_samples": pick("eval_samples", int, 1, 64, 1),
    }


def resolve_beta(beta: Any = "auto") -> float:
    """DPO's beta from `method.dpo.hyperparameters.beta` ("auto" or a number in (0, 2])."""
    if beta == "auto" or beta is None:
        return DEFAULT_BETA
    param = "method.dpo.hyperparameters.beta"
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta <= 2:
        raise InvalidRequestError(
            f'`{param}` must be "auto" or a number above 0 and at most 2, got {beta!r}.', param=param
        )
    return float(beta)
