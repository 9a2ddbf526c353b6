"""Evaluation passes and the result file of a training run.

Owns loss/accuracy over a set of examples without gradients (the per-step validation batch and
the full validation pass at each epoch end) and `results.csv`, the step table that becomes the
job's `fine-tune-results` file. Does not own the training step itself (recipe.py).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from tunegate.train.data import Example, micro_batches
from tunegate.train.lora import Precision, StepStats, forward_loss
from tunegate.train.packing import pack

RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


@torch.no_grad()
def evaluate(model, examples: list[Example], precision: Precision, token_budget: int) -> StepStats:
    was_training = model.training
    model.eval()  # no dropout: the numbers are comparable from step to step
    stats = StepStats()
    try:
        for group in micro_batches(examples, token_budget):
            _, s = forward_loss(model, pack([(e.input_ids, e.loss_mask) for e in group]), precision)
            stats.add(s)
    finally:
        model.train(was_training)
    return stats


def validation_batch(examples: list[Example], size: int, step: int) -> list[Example]:
    """The `step`-th batch of a cycle through the validation set (same batch for the same step)."""
    n = len(examples)
    start = ((step - 1) * size) % n
    return [examples[(start + i) % n] for i in range(min(size, n))]


class ResultsWriter:
    """Appends one row per optimizer step; on resume, rows after the checkpoint are dropped.

    `columns` other than the SFT ones (DPO's) are written straight from the metrics of the same name.
    """

    def __init__(self, path: Path, resume_step: int, columns: tuple[str, ...] = RESULT_COLUMNS):
        self.path, self.columns = Path(path), tuple(columns)
        rows = []
        if resume_step and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            w.writerows({k: r.get(k, "") for k in self.columns} for r in rows)

    def append(self, metrics: dict) -> None:
        row = {k: _fmt(metrics.get(k)) for k in self.columns} | {
            "step": metrics["step"],
            "train_loss": _fmt(metrics.get("train_loss")),
            "train_accuracy": _fmt(metrics.get("train_mean_token_accuracy")),
            "valid_loss": _fmt(metrics.get("valid_loss")),
            "valid_mean_token_accuracy": _fmt(metrics.get("valid_mean_token_accuracy")),
        }
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.6g}"
