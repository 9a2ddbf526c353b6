"""The DPO recipe: setup, train, evaluate, save — beside recipe.py, sharing its checkpoints and events.

Owns reading preference files into token pairs, the DPO loss exactly as the paper states it
(Rafailov et al. 2023, eq. 7):

    L = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

with log-probabilities summed over the tokens of the answer only, averaged over the pairs of a
batch, and `run_dpo`, the straight-line DPO training run. The reference policy is the same base
model with the LoRA adapter switched off (PEFT's `disable_adapter`), so no second copy of the
model is held in memory. It never changes during a run, so its log-probabilities are computed once,
in no-grad passes before the first step (`attach_reference`), and no step repeats them: a DPO step
is then one policy forward and backward, through the same fused forward as SFT (train/fused.py). From an `ft:`
parent (`init_adapter`) the reference is the parent: its adapter is loaded a second time, frozen,
on the same base (lora.reference_policy switches to it for the reference forward), and the trained
adapter starts as a copy of it, so step 1 starts at loss log 2 and the result is one adapter.

Metrics (events and results.csv): train_loss, train_rewards_chosen, train_rewards_rejected,
train_rewards_margin, train_rewards_accuracy (the implicit rewards beta * (log pi - log ref)), and
the same with `valid_`/`full_valid_` for held-out pairs. Checkpoints, resume after a crash, pause
and cancel behave exactly as in recipe.py (the helpers are shared). Knows nothing about jobs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tunegate.catalog import context_length, load_tokenizer
from tunegate.catalog.template import tokenize_examples
from tunegate.errors import InvalidRequestError
from tunegate.jsonl import INVALID, numbered_jsonl
from tunegate.train.checkpoints import latest_checkpoint, save_adapter, write_checkpoint
from tunegate.train.config import TrainConfig
from tunegate.train.data import Example, epoch_batches, file_sha256, steps_per_epoch
from tunegate.train.fused import packed_token_logps
from tunegate.train.lora import (
    Precision,
    build_model,
    choose_precision,
    load_reference_adapter,
    reference_policy,
    trainable_parameters,
)
from tunegate.train.metrics import ResultsWriter, validation_batch
from tunegate.train.packing import pack
from tunegate.train.recipe import (
    EventCallback,
    StopPoll,
    TrainResult,
    _checkpoints,
    _meta,
    _restore,
    _Say,
    _schedule,
    _trainer_state,
)

DPO_RESULT_COLUMNS = (
    "step",
    "train_loss",
    "train_rewards_chosen",
    "train_rewards_rejected",
    "train_rewards_margin",
    "train_rewards_accuracy",
    "valid_loss",
    "valid_rewards_margin",
    "valid_rewards_accuracy",
)


@dataclass
class Pair:
    chosen: Example
    rejected: Example
    reference: tuple[float, float] | None = None
    """log ref(chosen|x), log ref(rejected|x): fixed for the whole run, so computed once (`attach_reference`)."""

    @property
    def n_tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


@dataclass
class PairDataset:
    examples: list[Pair]  # named like data.Dataset so the shared checkpoint metadata reads it
    sha256: str
    n_truncated: int
    n_dropped: int

    @property
    def n_tokens(self) -> int:
        return sum(p.n_tokens for p in self.examples)


def read_preferences(path: str | Path, param: str = "training_file") -> list[tuple[list[dict], dict, dict]]:
    """(prompt messages, preferred message, non-preferred message) of every line (validated on upload)."""
    out = []
    for lineno, row in numbered_jsonl(path):
        try:
            if row is INVALID:
                raise ValueError("not JSON")
            out.append((list(row["input"]["messages"]), row["preferred_output"][0], row["non_preferred_output"][0]))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InvalidRequestError(
                f"Line {lineno} of the {param.replace('_', ' ')} is not a preference example with `input`, "
                f"`preferred_output` and `non_preferred_output` ({type(exc).__name__}). Validate it with "
                "`tunegate validate FILE` and upload it again.",
                param=param,
                code=f"invalid_{param}",
            ) from exc
    return out


def load_pairs(path: str | Path, tokenizer, max_seq_len: int, param: str = "training_file") -> PairDataset:
    """Token pairs: prompt + answer rendered with the chat template; only the answer is scored."""
    rows = read_preferences(path, param)
    conversations = []
    for prompt, chosen, rejected in rows:
        # Assistant turns inside the prompt are context, never scored.
        context = [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in prompt]
        conversations += [context + [{**chosen, "weight": 1}], context + [{**rejected, "weight": 1}]]
    tokenized = tokenize_examples(tokenizer, conversations)
    pairs, truncated, dropped = [], 0, 0
    for i in range(0, len(tokenized), 2):
        sides = []
        for tok in tokenized[i : i + 2]:
            ids, mask = tok.input_ids, tok.loss_mask
            if len(ids) > max_seq_len:
                ids, mask = ids[:max_seq_len], mask[:max_seq_len]
                truncated += 1
            sides.append(Example(ids, mask))
        if sides[0].n_loss == 0 or sides[1].n_loss == 0:
            dropped += 1
            continue
        pairs.append(Pair(*sides))
    if not pairs:
        raise InvalidRequestError(
            f"The {param.replace('_', ' ')} has no preference pair with both answers left after truncation at "
            f"{max_seq_len} tokens. Shorten the prompts or raise `max_seq_len`.",
            param=param,
            code=f"invalid_{param}",
        )
    return PairDataset(pairs, file_sha256(path), truncated, dropped)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and the implicit rewards beta * (log pi - log ref) of both answers."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def sequence_logps(model, examples: list[Example], precision: Precision, *, policy: bool = False) -> torch.Tensor:
    """Summed log-probability of each example's scored tokens, in one padding-free packed forward;
    `policy`: the trained adapter's pass (the fused forward, `fused.packed_token_logps`)."""
    row = pack([(e.input_ids, e.loss_mask) for e in examples])
    with precision.autocast():
        token_logps = packed_token_logps(model, row, precision.device, policy=policy)
    return torch.stack([part.sum() for part in token_logps.split([e.n_loss for e in examples])])


@torch.no_grad()
def attach_reference(model, pairs: list[Pair], precision: Precision, token_budget: int) -> None:
    """Fill in every pair's reference log-probabilities, in no-grad passes of `token_budget` tokens.

    The reference never changes during a run, so one pass before training replaces a reference
    forward in every step, every validation batch and every epoch (recomputed on resume, same groups)."""
    for group in pair_groups(pairs, token_budget):
        with reference_policy(model):
            ref = sequence_logps(model, [p.chosen for p in group] + [p.rejected for p in group], precision).tolist()
        for i, p in enumerate(group):
            p.reference = (ref[i], ref[len(group) + i])


@dataclass
class DPOStats:
    """Sums over pairs, so micro-batches add up exactly."""

    loss_sum: float = 0.0
    chosen_sum: float = 0.0
    rejected_sum: float = 0.0
    correct: int = 0
    n_pairs: int = 0
    n_tokens: int = 0

    def add(self, other: DPOStats) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def metrics(self, prefix: str) -> dict[str, float]:
        n = max(self.n_pairs, 1)
        return {
            f"{prefix}loss": self.loss_sum / n,
            f"{prefix}rewards_chosen": self.chosen_sum / n,
            f"{prefix}rewards_rejected": self.rejected_sum / n,
            f"{prefix}rewards_margin": (self.chosen_sum - self.rejected_sum) / n,
            f"{prefix}rewards_accuracy": self.correct / n,
        }


def pair_loss(model, pairs: list[Pair], beta: float, precision: Precision) -> tuple[torch.Tensor, DPOStats]:
    """Summed DPO loss of `pairs`: their reference log-probs (attached once, or a no-grad pass with the
    adapter off or the parent's), then the policy pass."""
    examples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    n = len(pairs)
    if all(p.reference is not None for p in pairs):
        ref = torch.tensor([p.reference[0] for p in pairs] + [p.reference[1] for p in pairs])  # type: ignore[index]
    else:
        with torch.no_grad(), reference_policy(model):
            ref = sequence_logps(model, examples, precision)
    policy = sequence_logps(model, examples, precision, policy=True)
    losses, chosen, rejected = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], beta)
    stats = DPOStats(
        float(losses.detach().sum()),
        float(chosen.sum()),
        float(rejected.sum()),
        int((chosen > rejected).sum()),
        n,
        sum(p.n_tokens for p in pairs),
    )
    return losses.sum(), stats


def pair_groups(pairs: list[Pair], token_budget: int) -> list[list[Pair]]:
    """Consecutive groups of at most `token_budget` tokens, both answers of a pair together."""
    groups: list[list[Pair]] = []
    used = token_budget
    for p in pairs:
        if used + p.n_tokens > token_budget:
            groups.append([])
            used = 0
        groups[-1].append(p)
        used += p.n_tokens
    return groups


@torch.no_grad()
def evaluate_pairs(model, pairs: list[Pair], beta: float, precision: Precision, token_budget: int) -> DPOStats:
    was_training = model.training
    model.eval()
    stats = DPOStats()
    try:
        for group in pair_groups(pairs, token_budget):
            stats.add(pair_loss(model, group, beta, precision)[1])
    finally:
        model.train(was_training)
    return stats


def run_dpo(config: TrainConfig, out_dir: Path, on_event: EventCallback, should_stop: StopPoll) -> TrainResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = _Say(on_event)

    # ---- setup: preference pairs, the LoRA model (its adapter-off self is the reference), optimizer
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    precision = choose_precision(config)
    config = dataclasses.replace(config, max_seq_len=config.max_seq_len or context_length(config.base_model_path))
    tokenizer = load_tokenizer(config.base_model_path)
    train = load_pairs(config.training_file, tokenizer, config.max_seq_len)
    valid = (
        load_pairs(config.validation_file, tokenizer, config.max_seq_len, "validation_file")
        if config.validation_file
        else None
    )
    for name, ds in (("training", train), ("validation", valid)):
        if ds and ds.n_truncated:
            say.warn(
                f"{ds.n_truncated} {name} answers are longer than {config.max_seq_len} tokens with their prompt "
                "and were truncated; raise `max_seq_len` or shorten them."
            )
        if ds and ds.n_dropped:
            say.warn(f"{ds.n_dropped} {name} pairs lost an answer to truncation and were skipped.")
    per_epoch = steps_per_epoch(len(train.examples), config.batch_size)
    total_steps = per_epoch * config.n_epochs
    eval_size = config.eval_batch_size or config.batch_size

    model = build_model(config, precision)  # from a parent, the trained adapter starts as its copy
    if config.init_adapter:
        load_reference_adapter(model, Path(config.init_adapter))
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, config, total_steps)
    started = time.perf_counter()
    every_pair = train.examples + (valid.examples if valid else [])
    attach_reference(model, every_pair, precision, config.micro_batch_tokens)
    seconds = time.perf_counter() - started
    say.info(
        f"Reference log-probabilities of {len(every_pair)} pairs computed once in {seconds:.1f} s "
        "(one no-grad pass; no step repeats it).",
        {"reference_pairs": len(every_pair), "reference_seconds": round(seconds, 3)},
    )

    step, trained_tokens, metrics = 0, 0, {}
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        _check_dpo_checkpoint(checkpoint, config)
        state = _restore(checkpoint, config, train, model, optimizer, scheduler)
        step, trained_tokens, metrics = state["step"], state["trained_tokens"], state["metrics"]
        say.info(f"Resuming from the checkpoint at step {step} of {total_steps}.")
    else:
        say.info(
            f"DPO training started: {len(train.examples)} preference pairs ({train.n_tokens} tokens) x "
            f"{config.n_epochs} epochs = {total_steps} steps of batch size {config.batch_size}, beta "
            f"{config.beta:g}, learning rate {config.learning_rate:g}, LoRA r={config.lora_r}; the reference "
            f"is {'the parent model' if config.init_adapter else 'the base model with the adapter off'}, "
            f"{precision.device.type} "
            f"{'bf16' if precision.autocast_dtype else 'fp32'}."
        )
    results = ResultsWriter(out_dir / "results.csv", resume_step=step, columns=DPO_RESULT_COLUMNS)

    def save_checkpoint(epoch: int) -> Path:
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
        return Path(saved["path"])

    # ---- train: epochs of shuffled pair batches, one optimizer step per batch
    model.train()
    for epoch in range(step // per_epoch, config.n_epochs):
        batches = epoch_batches(len(train.examples), config.batch_size, config.seed, epoch)
        for index in range(step - epoch * per_epoch, per_epoch):
            batch = [train.examples[i] for i in batches[index]]
            learning_rate = scheduler.get_last_lr()[0]
            stats, grad_norm = _optimizer_step(model, optimizer, params, batch, config, precision)
            scheduler.step()
            step += 1
            trained_tokens += stats.n_tokens
            metrics = {
                "step": step,
                "total_steps": total_steps,
                "epoch": epoch + 1,
                **stats.metrics("train_"),
                "trained_tokens": trained_tokens,
                "learning_rate": learning_rate,
                "grad_norm": grad_norm,
            }

            # ---- evaluate: one held-out batch every step, every held-out pair at epoch end
            if valid is not None:
                v = evaluate_pairs(
                    model,
                    validation_batch(valid.examples, eval_size, step),
                    config.beta,
                    precision,
                    config.micro_batch_tokens,
                )
                metrics |= v.metrics("valid_")
            epoch_end = index == per_epoch - 1
            if epoch_end and valid is not None:
                metrics |= evaluate_pairs(
                    model, valid.examples, config.beta, precision, config.micro_batch_tokens
                ).metrics("full_valid_")
            results.append(metrics)
            say.metrics(metrics)

            # ---- save: one checkpoint per epoch; stop or pause between optimizer steps
            if epoch_end:
                save_checkpoint(epoch + 1)
            control = should_stop()
            if control == "cancel":
                say.info(f"Training cancelled at step {step} of {total_steps}.")
                return TrainResult("cancelled", None, _checkpoints(out_dir), trained_tokens, metrics)
            if control == "pause":
                if not epoch_end:
                    save_checkpoint(epoch + 1)
                say.info(f"Training paused at step {step} of {total_steps}.")
                return TrainResult("paused", None, _checkpoints(out_dir), trained_tokens, metrics)

    adapter_dir = save_adapter(
        model,
        out_dir / "adapter",
        _meta("adapter", config, train, valid, step, config.n_epochs, metrics, trained_tokens),
    )
    say.info(
        f"DPO training finished: {step} steps, {trained_tokens} tokens, final loss "
        f"{metrics.get('train_loss', float('nan')):.4f}, reward margin "
        f"{metrics.get('train_rewards_margin', float('nan')):.4f}."
    )
    return TrainResult("succeeded", adapter_dir, _checkpoints(out_dir), trained_tokens, metrics)


def _optimizer_step(model, optimizer, params, batch: list[Pair], config: TrainConfig, precision: Precision):
    """Accumulate over token-budgeted micro-batches; each adds its summed loss / pairs in the batch."""
    optimizer.zero_grad(set_to_none=True)
    stats = DPOStats()
    for group in pair_groups(batch, config.micro_batch_tokens):
        loss_sum, s = pair_loss(model, group, config.beta, precision)
        (loss_sum / len(batch)).backward()
        stats.add(s)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    optimizer.step()
    return stats, grad_norm


def _check_dpo_checkpoint(checkpoint: Path, config: TrainConfig) -> None:
    saved = json.loads((checkpoint / "meta.json").read_text())["config"]
    changed = [k for k in ("method", "beta") if saved.get(k) != getattr(config, k)]
    if changed:
        raise InvalidRequestError(
            f"{checkpoint.parent} holds checkpoints of a different training run (changed: {', '.join(changed)}). "
            "Use a fresh output folder for a new configuration.",
            param=changed[0],
            code="checkpoint_mismatch",
        )
