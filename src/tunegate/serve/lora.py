"""Batched multi-LoRA for serving: many PEFT adapters on one shared base model, applied to a whole
mixed batch in one pass per layer.

Owns reading and checking adapter folders (PEFT format + `meta.json`), the LRU of adapter slots and
the LoRA math at inference. Does not own scheduling or sampling (`serve/scheduler.py`, `serve/output.py`).

How: every targeted `nn.Linear` is wrapped once. The wrapper keeps, per slot of the adapter cache,
the adapter's A (r x in) and scaled B (out x r) in one stacked tensor; slot 0 is all zeros (no
adapter). Before each forward the engine sets the slot of every batch row. Adapters are batched by
group: the k adapters the batch uses are laid side by side (A as one [k*r, in] matrix, B as one
[out, k*r] matrix, built once per set of adapters and kept until it changes), so a mixed batch costs
two plain matmuls per layer, `((x A_cat^T) * onehot) B_cat^T`, where the one-hot mask keeps each row's
own adapter's r columns. Gathering A and B per row (a [batch, r, in] copy per layer per step) cost
more memory traffic than the math; PEFT's `adapter_names=` runs one sub-batch per adapter, which
loses half the batching gain here. Exact: the masked columns are exact zeros.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tunegate.catalog import BaseModelInfo
from tunegate.errors import InvalidRequestError

_A = ".lora_A.weight"
_B = ".lora_B.weight"


@dataclass
class AdapterWeights:
    """One adapter ready to install: module name -> (A [r, in], B * scaling [out, r])."""

    path: Path
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]


def _invalid(path: Path, why: str, code: str = "invalid_adapter") -> InvalidRequestError:
    return InvalidRequestError(f"The adapter at {path} cannot be served: {why}", param="model", code=code)


def read_meta(path: Path) -> dict:
    try:
        return json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise _invalid(path, "it has no meta.json (written beside every adapter by the trainer).") from None
    except json.JSONDecodeError as exc:
        raise _invalid(path, f"its meta.json is not valid JSON ({exc}).") from None


def read_config(path: Path) -> dict:
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise _invalid(path, "it has no adapter_config.json (PEFT format expected).") from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise _invalid(path, f"peft_type is {config.get('peft_type')}; only LORA adapters are served.")
    if config.get("use_dora"):
        raise _invalid(path, "DoRA adapters are not supported by the built-in engine; train without use_dora.")
    if config.get("modules_to_save"):
        raise _invalid(path, "adapters with modules_to_save are not supported; train LoRA-only adapters.")
    if config.get("bias", "none") != "none":
        raise _invalid(path, "LoRA bias terms are not supported; train with bias='none'.")
    if not (path / "adapter_model.safetensors").exists():
        raise _invalid(path, "it has no adapter_model.safetensors.")
    return config


def check_adapter(path: Path, base: BaseModelInfo) -> None:
    """Same template by construction: refuse an adapter trained with another chat template."""
    meta = read_meta(path)
    config = read_config(path)
    trained = meta.get("template_sha256")
    if trained != base.template_sha256:
        raise _invalid(
            path,
            f"it was trained with chat template sha256 {trained}, but base model `{base.name}` now renders with "
            f"{base.template_sha256}. Serving it would prompt it differently from training: restore the base "
            "model's original chat template or fine-tune again on this base.",
            code="template_mismatch",
        )
    del config


def _pattern_value(patterns: dict, module: str, default):
    # PEFT's rank_pattern / alpha_pattern keys match the end of a module name.
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_adapter(path: Path, base: BaseModelInfo, dtype: torch.dtype = torch.float32) -> AdapterWeights:
    from safetensors.torch import load_file

    check_adapter(path, base)
    config = read_config(path)
    tensors = load_file(str(path / "adapter_model.safetensors"))
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in tensors.items():
        if not key.endswith(_A):
            if "lora_embedding" in key:
                raise _invalid(path, "LoRA on embeddings is not supported; target linear layers only.")
            continue
        name = key[: -len(_A)].removeprefix("base_model.model.")
        b = tensors.get(key[: -len(_A)] + _B)
        if b is None:
            raise _invalid(path, f"{key} has no matching lora_B weight.")
        rank = a.shape[0]
        alpha = _pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", rank))
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        modules[name] = (a.to(dtype).contiguous(), (b.to(torch.float32) * scaling).to(dtype).contiguous())
    if not modules:
        raise _invalid(path, "adapter_model.safetensors holds no LoRA weights.")
    return AdapterWeights(path, modules)


class BatchSlots:
    """The adapter slot of every row of the current batch, shared by all wrapped layers."""

    def __init__(self) -> None:
        self.rows: torch.Tensor | None = None  # [batch] slot ids; None = no adapter anywhere
        self.single: int | None = None  # the one slot used by every row, if so
        self.used: tuple[int, ...] = ()  # the distinct adapter slots (not 0) of a mixed batch, in order
        self._masks: dict[int, torch.Tensor] = {}

    def set(self, slots: list[int]) -> None:
        self._masks = {}
        if not any(slots):
            self.rows, self.single, self.used = None, None, ()
            return
        self.rows = torch.tensor(slots, dtype=torch.long)
        self.single = slots[0] if all(s == slots[0] for s in slots) else None
        self.used = tuple(sorted({s for s in slots if s}))

    def mask(self, rank: int, dtype: torch.dtype) -> torch.Tensor:
        """[batch, 1, k*rank]: 1 where a column belongs to the row's own adapter (computed once per batch)."""
        m = self._masks.get(rank)
        if m is None:
            group = torch.tensor(self.used, dtype=torch.long).repeat_interleave(rank)  # [k*rank] slot of column
            m = self._masks[rank] = (self.rows[:, None] == group[None, :]).to(dtype).unsqueeze(1)
        return m


class MultiLoraLinear(nn.Module):
    """`base(x) + (x A[slot]^T) B[slot]^T` for each batch row's slot."""

    def __init__(self, base: nn.Linear, n_slots: int, slots: BatchSlots):
        super().__init__()
        self.base = base
        self.slots = slots
        self.rank = 0
        self.register_buffer("A", torch.zeros(n_slots, 0, base.in_features, dtype=base.weight.dtype), persistent=False)
        self.register_buffer("B", torch.zeros(n_slots, base.out_features, 0, dtype=base.weight.dtype), persistent=False)
        # (adapter slots, A_cat, B_cat) of the last mixed batch; reset when an adapter is installed
        self._cat: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def install(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        if a is not None and a.shape[0] > self.rank:
            grow = a.shape[0] - self.rank  # zero-padding the rank is exact
            self.A = torch.cat([self.A, self.A.new_zeros(self.A.shape[0], grow, self.A.shape[2])], 1)
            self.B = torch.cat([self.B, self.B.new_zeros(self.B.shape[0], self.B.shape[1], grow)], 2)
            self.rank = a.shape[0]
        self.A[slot].zero_()
        self.B[slot].zero_()
        if a is not None:
            self.A[slot, : a.shape[0]] = a
            self.B[slot, :, : b.shape[1]] = b
        self._cat = None

    def _concatenated(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = self.slots.used
        if self._cat is None or self._cat[0] != key:
            index = torch.tensor(self.slots.used, dtype=torch.long)
            a = self.A.index_select(0, index).reshape(-1, self.A.shape[2])  # [k*r, in]
            b = self.B.index_select(0, index).permute(1, 0, 2).reshape(self.B.shape[1], -1)  # [out, k*r]
            self._cat = (key, a.contiguous(), b.contiguous())
        return self._cat[1], self._cat[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        slots = self.slots
        if slots.rows is None or self.rank == 0:
            return y
        if slots.single is not None:
            s = slots.single
            return y.add_(F.linear(F.linear(x, self.A[s]), self.B[s]))
        a, b = self._concatenated()
        h = F.linear(x, a)  # [batch, tokens, k*r]: every used adapter's down-projection
        return y.add_(F.linear(h.mul_(slots.mask(self.rank, h.dtype)), b))


class AdapterSlots:
    """LRU of adapters installed in a base model's wrapped layers (slot 0 = no adapter)."""

    def __init__(self, model: nn.Module, capacity: int, base: BaseModelInfo):
        self.model = model
        self.base = base
        self.capacity = capacity
        self.batch = BatchSlots()
        self.layers: dict[str, MultiLoraLinear] = {}
        self.lru: OrderedDict[Path, int] = OrderedDict()
        self.free = list(range(capacity, 0, -1))
        self.loads = 0  # adapters read from disk so far (observable cache behaviour)

    def slot_of(self, path: Path | None) -> int | None:
        if path is None:
            return 0
        slot = self.lru.get(path)
        if slot is not None:
            self.lru.move_to_end(path)
        return slot

    def acquire(self, path: Path | None, in_use: set[int]) -> int | None:
        """The slot of adapter `path`, loading it (evicting the least recently used adapter that no
        running sequence uses) if needed; None when every slot is busy."""
        slot = self.slot_of(path)
        if slot is not None:
            return slot
        if not self.free:
            victim = next((p for p, s in self.lru.items() if s not in in_use), None)
            if victim is None:
                return None
            self.free.append(self.lru.pop(victim))
        weights = load_adapter(path, self.base, next(self.model.parameters()).dtype)
        slot = self.free.pop()
        try:
            self._install(slot, weights)
        except Exception:
            self._install(slot, None)
            self.free.append(slot)
            raise
        self.lru[path] = slot
        self.loads += 1
        return slot

    def _install(self, slot: int, weights: AdapterWeights | None) -> None:
        modules = weights.modules if weights else {}
        for name in modules:
            if name not in self.layers:
                self._wrap(name, weights.path)
        for name, layer in self.layers.items():
            a, b = modules.get(name, (None, None))
            if a is not None and (a.shape[1] != layer.base.in_features or b.shape[0] != layer.base.out_features):
                raise _invalid(weights.path, f"the shapes of {name} do not match base model `{self.base.name}`.")
            layer.install(slot, a, b)

    def _wrap(self, name: str, path: Path) -> None:
        parent_name, _, child = name.rpartition(".")
        try:
            parent = self.model.get_submodule(parent_name)
            target = getattr(parent, child)
        except AttributeError:
            raise _invalid(path, f"it targets `{name}`, which base model `{self.base.name}` does not have.") from None
        if not isinstance(target, nn.Linear):
            raise _invalid(path, f"it targets `{name}`, which is not a linear layer.")
        wrapped = MultiLoraLinear(target, self.capacity + 1, self.batch)
        setattr(parent, child, wrapped)
        self.layers[name] = wrapped

    def set_batch(self, slots: list[int]) -> None:
        self.batch.set(slots)
