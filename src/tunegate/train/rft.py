"""The reinforcement fine-tuning recipe (GRPO-style): setup, sample, grade, update, evaluate, save.

Owns `run_rft`: for each batch of prompts the policy (base + LoRA) samples a group of answers per
prompt, a reward function (built from the job's grader by the caller: this module knows nothing
about graders or jobs) scores them, the advantages are the rewards normalised within each group
(r - mean) / (std + eps), and one gradient step minimises

    mean over answers of [ -A * mean_t log pi(a_t) + kl_coef * mean_t k3(pi, ref) ]

with the reference being the same model with the adapter switched off (from an `ft:` parent: the
parent's adapter, frozen, which the trained adapter starts from; lora.reference_policy) and k3 the unbiased,
always-positive KL estimator exp(ref - pi) - (ref - pi) - 1 (Schulman). One update per sampled
batch keeps the policy on-policy, so GRPO's clipped ratio is exactly 1 and is omitted. Metrics:
train_reward_mean, train_reward_std, train_kl, train_loss, completion_tokens, the reward
function's own figures (a grader's sub-scores and error rate, as `train_<name>`), and
valid_reward_mean (held-out prompts: one greedy answer each, or `rft_eval_samples` sampled ones)
every `rft_eval_interval` steps and at each epoch end (then also full_valid_reward_mean, which
picks the best checkpoint). Checkpoints and resume are recipe.py's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from tunegate.catalog import load_tokenizer
from tunegate.catalog.template import render
from tunegate.errors import InvalidRequestError
from tunegate.jsonl import numbered_jsonl
from tunegate.train.checkpoints import latest_checkpoint, save_adapter, write_checkpoint
from tunegate.train.config import TrainConfig
from tunegate.train.data import Example, epoch_batches, file_sha256, steps_per_epoch
from tunegate.train.fused import packed_token_logps
from tunegate.train.lora import (
    build_model,
    choose_precision,
    load_reference_adapter,
    reference_policy,
    trainable_parameters,
)
from tunegate.train.metrics import ResultsWriter
from tunegate.train.packing import PACKED_ATTENTION, pack
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

# reward_fn(answers, items) -> one reward per answer (items[i] is the JSONL row answers[i] responds to),
# or (rewards, extra metrics of the batch such as a grader's sub-scores and error rate).
RewardFn = Callable[[list[str], list[dict]], "list[float] | tuple[list[float], dict[str, float]]"]
RFT_RESULT_COLUMNS = (
    "step",
    "train_loss",
    "train_reward_mean",
    "train_reward_std",
    "train_kl",
    "completion_tokens",
    "valid_reward_mean",
    "full_valid_reward_mean",
)


def _rewards(reward_fn: RewardFn, answers: list[str], items: list[dict]) -> tuple[list[float], dict[str, float]]:
    out = reward_fn(answers, items)
    rewards, extra = out if isinstance(out, tuple) else (out, {})
    if len(rewards) != len(answers):
        raise ValueError(f"the reward function gave {len(rewards)} rewards for {len(answers)} answers")
    return [float(r) for r in rewards], extra


@dataclasses.dataclass
class Prompts:
    examples: list[dict]  # the JSONL rows: `messages` (ending with a user turn) plus any grader fields
    sha256: str


def load_prompts(path: str | Path, param: str = "training_file") -> Prompts:
    rows = []
    for lineno, row in numbered_jsonl(path):  # a line that is not JSON is INVALID: refused below
        msgs = row.get("messages") if isinstance(row, dict) else None
        if (
            not isinstance(msgs, list)
            or not msgs
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)
            or msgs[-1].get("role") != "user"
        ):
            raise InvalidRequestError(
                f"Line {lineno} of the {param.replace('_', ' ')}: reinforcement fine-tuning rows are JSON "
                "objects with `messages` (each with a string `content`) ending with a user turn (the prompt); "
                "other fields are passed to the grader as `item`.",
                param=param,
                code=f"invalid_{param}",
            )
        rows.append(row)
    if not rows:
        raise InvalidRequestError(
            f"The {param.replace('_', ' ')} has no prompts.", param=param, code=f"invalid_{param}"
        )
    return Prompts(rows, file_sha256(path))


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """rewards (n_prompts, group) -> (r - group mean) / (group std + eps); an all-equal group gives 0."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[list[dict]],
    n: int,
    max_new_tokens: int,
    temperature: float,
    device,
    batch_size: int = 16,
) -> list[list[tuple[list[int], list[int], str]]]:
    """For each prompt, n answers as (prompt ids, answer ids ending at the end-of-turn token, text).

    Up to `batch_size` prompts are left-padded into one `generate` call (n answers each): one
    decoding loop per batch instead of one per prompt, which is most of the sampling time on a CPU.
    """
    was_training = model.training
    model.eval()
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT-wrapped or not
    previous = getattr(inner.config, "_attn_implementation", None) or PACKED_ATTENTION
    # The packed attention of training does not handle a KV cache; generate with SDPA, then switch back.
    inner.set_attn_implementation("sdpa")
    inner.config.use_cache = True
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    kw = {"do_sample": True, "temperature": temperature, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
    rows = [
        tokenizer(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        for messages in prompts
    ]
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk], device=device)
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n,
                pad_token_id=pad,
                eos_token_id=eos,
                **kw,
            )
            new = gen[:, width:].tolist()  # the n answers of each prompt are consecutive rows
            for j, prompt_ids in enumerate(chunk):
                group = []
                for row in new[j * n : (j + 1) * n]:
                    if eos in row:
                        row = row[: row.index(eos) + 1]
                    group.append((prompt_ids, row, tokenizer.decode(row, skip_special_tokens=True).strip()))
                out.append(group)
    finally:
        inner.set_attn_implementation(previous)
        inner.config.use_cache = False
        model.train(was_training)
    return out


def grpo_loss(
    model, sequences: list[tuple[list[int], list[int]]], advantages: torch.Tensor, kl_coef: float, precision
) -> tuple[torch.Tensor, float]:
    """Summed per-answer loss (token-mean policy gradient + k3 KL to the reference) and the mean KL."""
    examples = [Example(p + a, [0] * len(p) + [1] * len(a)) for p, a in sequences]
    keep = [i for i, e in enumerate(examples) if e.n_loss > 0]
    examples = [examples[i] for i in keep]
    advantages = advantages[keep].to(precision.device)
    with torch.no_grad(), reference_policy(model):
        ref = _token_logps(model, examples, precision)
    policy = _token_logps(model, examples, precision, policy=True)
    loss, kl_total = torch.zeros((), device=precision.device), 0.0
    for logp, ref_logp, adv in zip(policy, ref, advantages):
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        loss = loss + (-adv * logp).mean() + kl_coef * kl.mean()
        kl_total += float(kl.detach().mean())
    return loss, kl_total / max(len(examples), 1)


def _token_logps(model, examples: list[Example], precision, *, policy: bool = False) -> list[torch.Tensor]:
    """Each answer's per-token log-probabilities, in one packed forward; `policy`: the trained
    adapter's pass, through the fused forward as SFT's and DPO's (the reference stays on PEFT's)."""
    row = pack([(e.input_ids, e.loss_mask) for e in examples])
    with precision.autocast():
        token_logps = packed_token_logps(model, row, precision.device, policy=policy)
    return list(token_logps.float().split([e.n_loss for e in examples]))


def run_rft(
    config: TrainConfig, out_dir: Path, on_event: EventCallback, should_stop: StopPoll, reward_fn: RewardFn
) -> TrainResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = _Say(on_event)

    # ---- setup: prompts, the LoRA policy (its adapter-off self is the reference), optimizer
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    precision = choose_precision(config)
    config = dataclasses.replace(config, max_seq_len=config.max_seq_len or 2048)
    tokenizer = load_tokenizer(config.base_model_path)
    train = load_prompts(config.training_file)
    valid = load_prompts(config.validation_file, "validation_file") if config.validation_file else None
    per_epoch = steps_per_epoch(len(train.examples), config.batch_size)
    total_steps = per_epoch * config.n_epochs
    model = build_model(config, precision)  # from a parent, the trained adapter starts as its copy
    if config.init_adapter:
        load_reference_adapter(model, Path(config.init_adapter))
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, config, total_steps)
    step, trained_tokens, metrics = 0, 0, {}
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        state = _restore(checkpoint, config, train, model, optimizer, scheduler)
        step, trained_tokens, metrics = state["step"], state["trained_tokens"], state["metrics"]
        say.info(f"Resuming from the checkpoint at step {step} of {total_steps}.")
    else:
        say.info(
            f"Reinforcement fine-tuning started: {len(train.examples)} prompts x {config.n_epochs} epochs = "
            f"{total_steps} steps of {config.batch_size} prompts, {config.rft_group_size} answers each, KL "
            f"coefficient {config.rft_kl_coef:g}, learning rate {config.learning_rate:g}."
        )
    results = ResultsWriter(out_dir / "results.csv", resume_step=step, columns=RFT_RESULT_COLUMNS)

    def evaluate_reward(rows: list[dict]) -> float:
        n = config.rft_eval_samples
        groups = sample(
            model,
            tokenizer,
            [r["messages"] for r in rows],
            n,
            config.rft_max_tokens,
            0.0 if n == 1 else 1.0,
            precision.device,
        )
        rewards, _ = _rewards(reward_fn, [a[2] for g in groups for a in g], [r for r in rows for _ in range(n)])
        return sum(rewards) / len(rewards)

    base_reward = metrics.get("base_valid_reward_mean")
    if step == 0 and valid is not None:
        # The adapter starts at zero (or as the parent's copy): this is the base (or parent) model.
        base_reward = evaluate_reward(valid.examples)
        on_event(
            {
                "level": "info",
                "type": "message",
                "data": {"base_valid_reward_mean": base_reward},
                "message": f"{'Parent' if config.init_adapter else 'Base'} model's mean reward on the {len(valid.examples)} held-out prompts: "
                f"{base_reward:.3f}.",
            }
        )

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

    model.train()
    for epoch in range(step // per_epoch, config.n_epochs):
        batches = epoch_batches(len(train.examples), config.batch_size, config.seed, epoch)
        for index in range(step - epoch * per_epoch, per_epoch):
            rows = [train.examples[i] for i in batches[index]]
            learning_rate = scheduler.get_last_lr()[0]
            # ---- sample a group per prompt, grade, normalise within groups, one update
            groups = sample(
                model,
                tokenizer,
                [r["messages"] for r in rows],
                config.rft_group_size,
                config.rft_max_tokens,
                1.0,
                precision.device,
            )
            answers = [a for g in groups for a in g]
            scores, extra = _rewards(reward_fn, [a[2] for a in answers], [r for r, g in zip(rows, groups) for _ in g])
            rewards = torch.tensor(scores, dtype=torch.float32)
            advantages = group_advantages(rewards.view(len(rows), config.rft_group_size)).flatten()
            optimizer.zero_grad(set_to_none=True)
            loss, kl = grpo_loss(model, [(p, a) for p, a, _ in answers], advantages, config.rft_kl_coef, precision)
            (loss / len(answers)).backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
            optimizer.step()
            scheduler.step()
            step += 1
            n_completion = sum(len(a) for _, a, _ in answers)
            trained_tokens += sum(len(p) + len(a) for p, a, _ in answers)
            metrics = {
                "step": step,
                "total_steps": total_steps,
                "epoch": epoch + 1,
                "train_loss": float(loss.detach()) / len(answers),
                "train_reward_mean": float(rewards.mean()),
                "train_reward_std": float(rewards.std(unbiased=False)),
                "train_kl": kl,
                "completion_tokens": n_completion / len(answers),
                "trained_tokens": trained_tokens,
                "learning_rate": learning_rate,
                "grad_norm": grad_norm,
                **{f"train_{k}": v for k, v in extra.items()},
            }
            if base_reward is not None:
                metrics["base_valid_reward_mean"] = base_reward
            epoch_end = index == per_epoch - 1
            interval = config.rft_eval_interval
            if valid is not None and (epoch_end or (interval and step % interval == 0)):
                metrics["valid_reward_mean"] = evaluate_reward(valid.examples)
                if epoch_end:
                    metrics["full_valid_reward_mean"] = metrics["valid_reward_mean"]
            results.append(metrics)
            _say_metrics(on_event, metrics)
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
        f"Reinforcement fine-tuning finished: {step} steps, final mean reward "
        f"{metrics.get('train_reward_mean', float('nan')):.3f}."
    )
    return TrainResult("succeeded", adapter_dir, _checkpoints(out_dir), trained_tokens, metrics)


def _say_metrics(on_event: EventCallback, m: dict) -> None:
    message = (
        f"Step {m['step']}/{m['total_steps']}: mean reward={m['train_reward_mean']:.3f}, "
        f"KL={m['train_kl']:.4f}, loss={m['train_loss']:.4f}"
    )
    if "valid_reward_mean" in m:
        message += f", held-out mean reward={m['valid_reward_mean']:.3f}"
    on_event({"level": "info", "message": message, "type": "metrics", "data": dict(m)})
