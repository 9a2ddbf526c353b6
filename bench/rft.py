"""Reinforcement fine-tuning on the real model, the fuller run behind tests/e2e/test_rft_learns.py.

The project's answer-format task (samples.rft_prompts: each question asks for an "Answer:" line and a
"Confidence:" line; samples.RFT_FORMAT_GRADER gives half a point per line), the grader built exactly
as a job's worker builds it (graders/rewards.py). Reports, base model vs after RFT, on the 16 held-out
prompts: the mean reward of greedy answers, the mean reward of 4 sampled answers per prompt, and the
share of greedy answers in the exact two-line format (samples.follows_format); plus seconds per
step and the KL at the end. The base figures come from the same run (adapter off), so the ratios hold
on a busy machine.

Usage: python bench/rft.py [--prompts 64] [--epochs 1] [--batch-size 4] [--lr-multiplier 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr-multiplier", type=float, default=4.0)
    p.add_argument("--compute-multiplier", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--model-path", default=None)
    args = p.parse_args()

    import torch

    from tunegate import samples
    from tunegate.catalog.registry import resolve_path
    from tunegate.graders.rewards import GRADER_REWARDS
    from tunegate.settings import Settings
    from tunegate.train.config import TrainConfig, resolve_hyperparameters, resolve_reinforcement
    from tunegate.train.rft import run_rft, sample

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model_path is None:
        cache = Path(__file__).resolve().parents[1] / ".cache" / "models"
        args.model_path = resolve_path(
            "smollm2-135m-instruct", Settings(model_cache_dir=cache) if cache.exists() else Settings()
        )
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-rft-") as tmp:
        work = Path(tmp)
        rows = samples.rft_prompts("demo_train")[: args.prompts]
        (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        held_out = samples.rft_prompts("demo_prompts")
        (work / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
        settings = Settings(data_dir=work / "data")
        grader = GRADER_REWARDS.check(
            samples.RFT_FORMAT_GRADER,
            settings=settings,
            files=[("training_file", work / "train.jsonl")],
            param="grader",
        )
        reward_fn = GRADER_REWARDS.reward_fn(grader, settings=settings)
        hp = {"compute_multiplier": args.compute_multiplier}
        n_epochs, batch_size, lr = resolve_hyperparameters(
            args.epochs, args.batch_size, args.lr_multiplier, n_examples=len(rows), method="reinforcement"
        )
        config = TrainConfig(
            base_model="smollm2-135m-instruct",
            base_model_path=str(args.model_path),
            template_sha256="",
            training_file=str(work / "train.jsonl"),
            validation_file=str(work / "valid.jsonl"),
            n_epochs=n_epochs,
            batch_size=batch_size,
            learning_rate=lr,
            seed=0,
            method="reinforcement",
            rft_max_tokens=40,
            warmup_ratio=0.0,
            **resolve_reinforcement(hp),
        )
        events: list[dict] = []

        def on_event(e: dict) -> None:
            events.append(e)
            print(e["message"], file=sys.stderr, flush=True)

        started = time.perf_counter()
        result = run_rft(config, work / "run", on_event, lambda: None, reward_fn)
        seconds = time.perf_counter() - started
        metrics = [e["data"] for e in events if e["type"] == "metrics"]

        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from tunegate.catalog import load_tokenizer

        tokenizer = load_tokenizer(args.model_path)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.model_path), result.adapter_dir)
        # rft.sample switches the attention to the trainer's packed kernel afterwards; register it.
        import tunegate.train.packing  # noqa: F401

        prompts = [r["messages"] for r in held_out]

        def measure() -> dict[str, float]:
            greedy = [g[0][2] for g in sample(model, tokenizer, prompts, 1, 40, 0.0, torch.device("cpu"))]
            sampled = [a[2] for g in sample(model, tokenizer, prompts, 4, 40, 1.0, torch.device("cpu")) for a in g]
            g_rewards, _ = reward_fn(greedy, held_out)
            s_rewards, _ = reward_fn(sampled, [r for r in held_out for _ in range(4)])
            return {
                "greedy_reward": sum(g_rewards) / len(g_rewards),
                "sampled_reward": sum(s_rewards) / len(s_rewards),
                "exact_format": sum(samples.follows_format(a) for a in greedy) / len(greedy),
            }

        tuned = measure()
        with model.disable_adapter():
            base = measure()
    print(
        f"\nRFT on the answer-format task: {len(rows)} prompts x {n_epochs} epoch(s), {batch_size} prompts per "
        f"step, {config.rft_group_size} answers each, lr {lr:g}, {len(metrics)} steps in {seconds:.0f} s "
        f"({seconds / max(len(metrics), 1):.1f} s/step incl. evaluation), final KL {metrics[-1]['train_kl']:.4f}\n"
    )
    print("| held-out (16 prompts) | base | after RFT |\n|---|---|---|")
    for key, name in (
        ("greedy_reward", "mean reward, greedy"),
        ("sampled_reward", "mean reward, 4 sampled"),
        ("exact_format", "exact two-line format, greedy"),
    ):
        print(f"| {name} | {base[key]:.3f} | {tuned[key]:.3f} |")


if __name__ == "__main__":
    main()
