"""The supervised fine-tuning recipe: setup, train, evaluate, save — one function, top to bottom.

Owns `run_training`: given a frozen `TrainConfig`, an output folder, an event callback and a
stop poll, it trains LoRA adapters and leaves PEFT checkpoints, a final adapter and results.csv
in the folder. Calling it again on a folder that holds checkpoints resumes from the latest one
(that is how a killed worker recovers). It knows nothing about HTTP, jobs or the database.

Events are dicts `{"level", "message", "type": "message"|"metrics"|"checkpoint", "data"}`; metrics
use OpenAI's names (train_loss, train_mean_token_accuracy, valid_loss, valid_mean_token_accuracy,
full_valid_loss, full_valid_mean_token_accuracy) plus step, total_steps, epoch, trained_tokens; a
checkpoint's data is its step, epoch, path, metrics and `kept_steps` (the checkpoints left after
pruning). Readers use `type` and `data`; `message` is for people.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tunegate.catalog import context_length, load_tokenizer
from tunegate.errors import InvalidRequestError, ServerError
from tunegate.train.checkpoints import (
    TRAINER_STATE,
    latest_checkpoint,
    list_checkpoints,
    save_adapter,
    write_checkpoint,
)
from tunegate.train.config import TrainConfig
from tunegate.train.data import Dataset, epoch_batches, load_dataset, micro_batches, steps_per_epoch
from tunegate.train.distributed import Group
from tunegate.train.lora import (
    Precision,
    StepStats,
    build_model,
    choose_precision,
    fit_micro_batch_tokens,
    forward_loss,
    is_out_of_memory,
    load_adapter_weights,
    trainable_parameters,
)
from tunegate.train.metrics import ResultsWriter, evaluate, validation_batch
from tunegate.train.packing import pack

EventCallback = Callable[[dict[str, Any]], None]
StopPoll = Callable[[], str | None]
# Fields that must match for a checkpoint to continue this run.
_RESUME_KEYS = (
    "base_model",
    "template_sha256",
    "n_epochs",
    "batch_size",
    "learning_rate",
    "seed",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "max_seq_len",
    "warmup_ratio",
    "weight_decay",
    "lr_scheduler",
)


@dataclass
class TrainResult:
    status: Literal["succeeded", "cancelled", "paused"]
    adapter_dir: Path | None
    checkpoints: list[tuple[int, Path, dict]] = field(default_factory=list)
    trained_tokens: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


def run_training(
    config: TrainConfig, out_dir: Path, on_event: EventCallback, should_stop: StopPoll, group: Group | None = None
) -> TrainResult:
    """`group`: this process's rank when training data-parallel (train/distributed.py); rank 0 alone
    reports events, polls `should_stop` and writes files."""
    if config.method == "dpo":  # same contract, its own straight-line recipe
        from tunegate.train.dpo import run_dpo

        return run_dpo(config, out_dir, on_event, should_stop)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    group = group or Group()
    say = _Say(on_event if group.is_main else lambda event: None)

    # ---- setup: data, model, optimizer, and the state of an interrupted run if there is one
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    precision = choose_precision(config)
    config = dataclasses.replace(config, max_seq_len=config.max_seq_len or context_length(config.base_model_path))
    tokenizer = load_tokenizer(config.base_model_path)
    train = load_dataset(config.training_file, tokenizer, config.max_seq_len)
    valid = (
        load_dataset(config.validation_file, tokenizer, config.max_seq_len, "validation_file")
        if config.validation_file
        else None
    )
    for name, ds in (("training", train), ("validation", valid)):
        if ds and ds.n_truncated:
            say.warn(
                f"{ds.n_truncated} {name} examples are longer than {config.max_seq_len} tokens and were "
                "truncated; raise `max_seq_len` or shorten them to train on their ends."
            )
        if ds and ds.n_dropped:
            say.warn(f"{ds.n_dropped} {name} examples have no trained assistant token and were skipped.")
    per_epoch = steps_per_epoch(len(train.examples), config.batch_size)
    total_steps = per_epoch * config.n_epochs
    eval_size = config.eval_batch_size or config.batch_size

    model = build_model(config, precision)
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, config, total_steps)

    step, trained_tokens, metrics = 0, 0, {}
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        state = _restore(checkpoint, config, train, model, optimizer, scheduler)
        step, trained_tokens, metrics = state["step"], state["trained_tokens"], state["metrics"]
    group.sync_parameters(params)
    if checkpoint is not None:
        say.info(f"Resuming from the checkpoint at step {step} of {total_steps}.")
    else:
        say.info(
            f"Training started: {len(train.examples)} examples ({train.n_tokens} tokens) x {config.n_epochs} "
            f"epochs = {total_steps} steps of batch size {config.batch_size}, learning rate "
            f"{config.learning_rate:g}, LoRA r={config.lora_r} on {', '.join(config.target_modules)}, "
            f"{precision.device.type} {'bf16' if precision.autocast_dtype else 'fp32'}."
        )
    results = ResultsWriter(out_dir / "results.csv", resume_step=step) if group.is_main else None
    micro_tokens = _initial_micro_batch_tokens(model, config, precision, say)
    started, started_tokens = time.perf_counter(), trained_tokens
    if precision.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(precision.device)

    def save_checkpoint(epoch: int) -> Path | None:
        if not group.is_main:  # every rank holds the same weights and optimizer state: save once
            group.barrier()
            return None
        saved = write_checkpoint(
            model,
            out_dir,
            step,
            epoch,
            _meta("checkpoint", config, train, valid, step, epoch, metrics, trained_tokens),
            _trainer_state(step, trained_tokens, metrics, optimizer, scheduler),
            keep=config.keep_checkpoints,
        )
        say.checkpoint(saved)
        group.barrier()
        return Path(saved["path"])

    # ---- train: epochs of shuffled batches, one optimizer step per batch
    model.train()
    for epoch in range(step // per_epoch, config.n_epochs):
        batches = epoch_batches(len(train.examples), config.batch_size, config.seed, epoch)
        for index in range(step - epoch * per_epoch, per_epoch):
            batch = [train.examples[i] for i in batches[index]]
            learning_rate = scheduler.get_last_lr()[0]
            stats, grad_norm, micro_tokens = _step_with_oom_retry(
                model, optimizer, params, batch, config, micro_tokens, precision, group, say
            )
            scheduler.step()
            step += 1
            trained_tokens += stats.n_tokens
            metrics = {
                "step": step,
                "total_steps": total_steps,
                "epoch": epoch + 1,
                "train_loss": stats.loss,
                "train_mean_token_accuracy": stats.accuracy,
                "trained_tokens": trained_tokens,
                "learning_rate": learning_rate,
                "grad_norm": grad_norm,
                "tokens_per_second": (trained_tokens - started_tokens) / max(time.perf_counter() - started, 1e-9),
                "peak_memory_mb": _peak_memory_mb(precision),
                "micro_batch_tokens": micro_tokens,
            }

            # ---- evaluate: one validation batch every step, the whole validation set at epoch end
            if valid is not None and group.is_main:
                v = evaluate(
                    model, validation_batch(valid.examples, eval_size, step), precision, config.micro_batch_tokens
                )
                metrics |= {"valid_loss": v.loss, "valid_mean_token_accuracy": v.accuracy}
            epoch_end = index == per_epoch - 1
            if epoch_end and valid is not None and group.is_main:
                full = evaluate(model, valid.examples, precision, config.micro_batch_tokens)
                metrics |= {"full_valid_loss": full.loss, "full_valid_mean_token_accuracy": full.accuracy}
            if results:
                results.append(metrics)
            say.metrics(metrics)

            # ---- save: one checkpoint per epoch; stop or pause between optimizer steps
            if epoch_end:
                save_checkpoint(epoch + 1)
            control = group.agree(should_stop() if group.is_main else None)
            if control == "cancel":
                say.info(f"Training cancelled at step {step} of {total_steps}.")
                return TrainResult("cancelled", None, _checkpoints(out_dir), trained_tokens, metrics)
            if control == "pause":
                if not epoch_end:
                    save_checkpoint(epoch + 1)
                say.info(f"Training paused at step {step} of {total_steps}.")
                return TrainResult("paused", None, _checkpoints(out_dir), trained_tokens, metrics)

    # ---- save: the final adapter (the weights of the last epoch's checkpoint) with its provenance
    adapter_dir = out_dir / "adapter"
    if group.is_main:
        save_adapter(
            model, adapter_dir, _meta("adapter", config, train, valid, step, config.n_epochs, metrics, trained_tokens)
        )
    group.barrier()
    say.info(
        f"Training finished: {step} steps, {trained_tokens} tokens, final training loss "
        f"{metrics.get('train_loss', float('nan')):.4f}, {metrics.get('tokens_per_second', 0):.0f} tokens/s, "
        f"peak memory {metrics.get('peak_memory_mb', 0):.0f} MiB ({precision.device.type})."
    )
    return TrainResult("succeeded", adapter_dir, _checkpoints(out_dir), trained_tokens, metrics)


def _initial_micro_batch_tokens(model, config: TrainConfig, precision: Precision, say) -> int:
    """The config's token budget; on CUDA, what fits the free device memory (capped at 16x the config's)."""
    if precision.device.type != "cuda":
        return config.micro_batch_tokens
    free, _ = torch.cuda.mem_get_info(precision.device)
    c = model.config
    fitted = fit_micro_batch_tokens(free, config, c.num_hidden_layers, c.hidden_size, c.vocab_size)
    tokens = min(fitted, 16 * config.micro_batch_tokens)
    say.info(f"Micro-batches of up to {tokens} tokens ({free / 2**30:.1f} GiB free on {torch.cuda.get_device_name()}).")
    return tokens


def _step_with_oom_retry(
    model, optimizer, params, batch, config: TrainConfig, micro_tokens: int, precision: Precision, group: Group, say
):
    """One optimizer step; out of memory, the step is redone with micro-batches half as large (the gradient is
    the same token mean whatever the split). Fails with a clear error when one example alone does not fit.
    Only in one process: a rank redoing its step alone would leave the others waiting in the all-reduce."""
    while True:
        try:
            return (
                *_optimizer_step(model, optimizer, params, batch, config, micro_tokens, precision, group),
                micro_tokens,
            )
        except Exception as exc:
            if not is_out_of_memory(exc) or group.world_size > 1:
                raise
            optimizer.zero_grad(set_to_none=True)
            if precision.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(micro_batches(batch, micro_tokens)) == len(batch):  # one example per pass already
                raise ServerError(
                    f"Out of memory on {precision.device.type} with one example of {max(len(e.input_ids) for e in batch)} "
                    "tokens per forward pass. Lower `tunegate.max_seq_len`, set `tunegate.gradient_checkpointing`, "
                    'or `tunegate.quantization: "nf4"` on a GPU.',
                    code="out_of_memory",
                ) from exc
            smaller = max(16, micro_tokens // 2)
            say.warn(f"Out of memory with micro-batches of {micro_tokens} tokens; redoing this step with {smaller}.")
            micro_tokens = smaller


def _peak_memory_mb(precision: Precision) -> float:
    if precision.device.type == "cuda":
        return torch.cuda.max_memory_allocated(precision.device) / 2**20
    import resource  # the process's peak resident memory (KiB on Linux)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _optimizer_step(
    model, optimizer, params, batch, config: TrainConfig, micro_tokens: int, precision: Precision, group: Group
):
    """Accumulate gradients over token-budgeted micro-batches, then clip and step once.

    Each micro-batch's summed loss is divided by the loss tokens of the whole batch, so the
    gradient is the token mean over the batch whatever the micro-batch split, and, summed over
    data-parallel ranks that each trained their slice, whatever the number of ranks.
    """
    optimizer.zero_grad(set_to_none=True)
    n_loss = sum(e.n_loss for e in batch)
    stats = StepStats()
    for micro in micro_batches(group.shard(batch), micro_tokens):
        loss_sum, s = forward_loss(model, pack([(e.input_ids, e.loss_mask) for e in micro]), precision)
        (loss_sum / n_loss).backward()
        stats.add(s)
    group.sum_gradients(params)
    stats = group.sum_stats(stats)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    optimizer.step()
    return stats, grad_norm


def _schedule(optimizer, config: TrainConfig, total_steps: int):
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    warmup = int(round(config.warmup_ratio * total_steps))
    make = get_cosine_schedule_with_warmup if config.lr_scheduler == "cosine" else get_linear_schedule_with_warmup
    return make(optimizer, warmup, total_steps)


def _trainer_state(step, trained_tokens, metrics, optimizer, scheduler) -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": 1,
        "step": step,
        "trained_tokens": trained_tokens,
        "metrics": metrics,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
    }


def _restore(checkpoint: Path, config: TrainConfig, train: Dataset, model, optimizer, scheduler) -> dict[str, Any]:
    meta = json.loads((checkpoint / "meta.json").read_text())
    changed = [k for k in _RESUME_KEYS if _norm(meta["config"].get(k)) != _norm(getattr(config, k))]
    if meta.get("training_file_sha256") != train.sha256:
        changed.append("training_file")
    if changed:
        raise InvalidRequestError(
            f"{checkpoint.parent} holds checkpoints of a different training run (changed: {', '.join(changed)}). "
            "Use a fresh output folder for a new configuration.",
            param=changed[0],
            code="checkpoint_mismatch",
        )
    state = torch.load(checkpoint / TRAINER_STATE, weights_only=True)
    load_adapter_weights(model, checkpoint)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def _meta(kind, config: TrainConfig, train: Dataset, valid: Dataset | None, step, epoch, metrics, trained_tokens):
    import peft
    import transformers

    return {
        "kind": kind,
        "step": step,
        "epoch": epoch,
        "created_at": int(time.time()),
        "base_model": config.base_model,
        "template_sha256": config.template_sha256,
        "training_file_sha256": train.sha256,
        "validation_file_sha256": valid.sha256 if valid else None,
        "n_train_examples": len(train.examples),
        "trained_tokens": trained_tokens,
        "metrics": metrics,
        "config": config.to_dict(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }


def _checkpoints(out_dir: Path) -> list[tuple[int, Path, dict]]:
    return [
        (step, d, json.loads((d / "meta.json").read_text()).get("metrics", {})) for step, d in list_checkpoints(out_dir)
    ]


class _Say:
    """Builds the event dicts; the callback decides where they go."""

    def __init__(self, on_event: EventCallback):
        self.on_event = on_event

    def info(self, message: str, data: dict[str, Any] | None = None) -> None:
        self.on_event({"level": "info", "message": message, "type": "message", "data": data})

    def warn(self, message: str) -> None:
        self.on_event({"level": "warn", "message": message, "type": "message", "data": None})

    def checkpoint(self, data: dict[str, Any]) -> None:
        """`data` as train/checkpoints.py's `write_checkpoint` returns it."""
        self.on_event(
            {
                "level": "info",
                "type": "checkpoint",
                "data": data,
                "message": f"Checkpoint saved at step {data['step']} (epoch {data['epoch']}).",
            }
        )

    def metrics(self, data: dict[str, Any]) -> None:
        message = f"Step {data['step']}/{data['total_steps']}: training loss={data['train_loss']:.4f}"
        if "valid_loss" in data:
            message += f", validation loss={data['valid_loss']:.4f}"
        if "full_valid_loss" in data:
            message += f", full validation loss={data['full_valid_loss']:.4f}"
        self.on_event({"level": "info", "message": message, "type": "metrics", "data": dict(data)})
