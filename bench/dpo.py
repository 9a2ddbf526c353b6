"""DPO step time: tunegate's DPO step against an SFT step on the same tokens, and TRL's DPOTrainer.

The same preference pairs (multi-turn chats from the chatterbot-corpus data package: the real last
reply is preferred over the last reply of another chat), the same LoRA (r=16 on all projections),
fp32, the same batch of pairs. The SFT baseline trains on exactly the same sequences (every chosen
and every rejected conversation, loss on the answers) in one optimizer step per batch, so the ratio
DPO/SFT is the cost of DPO itself (target <= 1.4x: at most one extra forward with the adapter off
and no gradient). tunegate computes the reference log-probabilities once, in a no-grad pass over
every pair before step 1, so its step is one policy forward and backward; a second row spreads that
pass over one epoch's steps (over n epochs its share is 1/n of that). TRL's DPOTrainer (same pairs, LoRA, its reference = adapter off as well, same
allocator) is the outside baseline, installed for the benchmark only:

    pip install --no-deps trl==1.16.0 datasets==5.2.0 dill==0.4.0 multiprocess==0.70.18 xxhash pandas

(dill 0.4.1 with multiprocess 0.70.19 cannot hash `datasets`' map functions under pyarrow 26:
a `PicklingError` on pyarrow's `MonthDayNano`; the pins above can.)

Usage: python bench/dpo.py [--steps 6] [--variants sft,dpo,trl-dpo]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import TARGETS, build_data  # noqa: E402  (the SFT benchmark's data and LoRA targets)

VARIANTS = ("sft", "dpo", "trl-dpo")


def make_pairs(chats: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    others = [c["messages"][-1]["content"] for c in chats]
    rng.shuffle(others)
    pairs = []
    for chat, other in zip(chats, others):
        msgs = chat["messages"]
        if other == msgs[-1]["content"]:
            continue
        pairs.append(
            {
                "input": {"messages": msgs[:-1]},
                "preferred_output": [msgs[-1]],
                "non_preferred_output": [{"role": "assistant", "content": other}],
            }
        )
    return pairs


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    step_ends: list[float] = []
    step_tokens: list[int] = []  # cumulative trained tokens at each step end (tunegate variants)
    reference: list[float] = []  # tunegate DPO: seconds of its one reference pass before step 1
    n_steps = args.warmup + args.steps
    if args.child in ("sft", "dpo"):
        from tunegate.train.config import TrainConfig
        from tunegate.train.recipe import run_training

        sft = args.child == "sft"
        config = TrainConfig(
            base_model="bench",
            base_model_path=str(args.model_path),
            template_sha256="",
            training_file=str(work / ("sft.jsonl" if sft else "pairs.jsonl")),
            n_epochs=1,
            batch_size=2 * args.batch_size if sft else args.batch_size,
            learning_rate=5e-5,
            seed=0,
            lora_r=16,
            lora_alpha=32,
            target_modules=tuple(TARGETS),
            max_seq_len=args.max_length,
            keep_checkpoints=1,
            method="supervised" if sft else "dpo",
            micro_batch_tokens=args.micro_batch_tokens,
        )

        def on_event(event):
            if event["type"] == "message" and event["data"] and "reference_seconds" in event["data"]:
                reference.append(event["data"]["reference_seconds"])
            if event["type"] == "metrics":
                step_ends.append(time.perf_counter())
                step_tokens.append(event["data"]["trained_tokens"])
                if len(step_ends) == n_steps:
                    raise StopIteration  # enough: the rest of the epoch is not measured

        try:
            run_training(config, work / f"out-{args.child}", on_event, lambda: None)
        except StopIteration:
            pass
    else:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import DPOConfig, DPOTrainer

        rows = [json.loads(line) for line in (work / "pairs.jsonl").read_text().splitlines()]
        dataset = Dataset.from_list(
            [
                {
                    "prompt": r["input"]["messages"],
                    "chosen": r["preferred_output"],
                    "rejected": r["non_preferred_output"],
                }
                for r in rows
            ]
        )

        class Timer(TrainerCallback):
            def on_step_end(self, targs, state, control, **kw):
                step_ends.append(time.perf_counter())

        cfg = DPOConfig(
            output_dir=str(work / "out-trl"),
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1,
            max_steps=n_steps,
            learning_rate=5e-5,
            beta=0.1,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            bf16=False,
            fp16=False,
            use_cpu=True,
            gradient_checkpointing=False,  # TRL's DPO default is True; tunegate recomputes nothing here either
            max_length=args.max_length,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(args.model_path)
        model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")
        DPOTrainer(
            model=model,
            args=cfg,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[Timer()],
        ).train()
    seconds = step_ends[n_steps - 1] - step_ends[args.warmup - 1]
    tokens = step_tokens[n_steps - 1] - step_tokens[args.warmup - 1] if step_tokens else None
    result = {
        "variant": args.child,
        "steps": args.steps,
        "seconds": seconds,
        "tokens": tokens,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "reference_seconds": reference[0] if reference else None,
        "total_steps": n_steps,
    }
    (work / f"{args.child}.json").write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=4, help="preference pairs per optimizer step")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--micro-batch-tokens", type=int, default=4096)
    p.add_argument("--model-path", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from tunegate.catalog import DEFAULT_MODEL, load_tokenizer
    from tunegate.catalog.registry import resolve_path
    from tunegate.settings import Settings
    from tunegate.threads import cores
    from tunegate.train.allocator import worker_env

    args.threads = args.threads or cores()
    if args.model_path is None:
        cache = Path(__file__).resolve().parents[1] / ".cache" / "models"
        args.model_path = resolve_path(DEFAULT_MODEL, Settings(model_cache_dir=cache) if cache.exists() else Settings())
    tokenizer = load_tokenizer(args.model_path)
    n_pairs = args.batch_size * (args.warmup + args.steps)
    # Chats of 100-180 tokens, so prompt + either answer stays under max_length (nothing is truncated).
    pairs = make_pairs(build_data(tokenizer, n_pairs + 8, seed=1, min_tokens=100, max_tokens=180), seed=1)[:n_pairs]
    results = {}
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-dpo-") as tmp:
        work = Path(tmp)
        (work / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
        # SFT on the same sequences, in the same order per step: pair i's chosen and rejected together.
        sft_rows = [
            {"messages": r["input"]["messages"] + out}
            for r in pairs
            for out in (r["preferred_output"], r["non_preferred_output"])
        ]
        (work / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows))
        for v in args.variants.split(","):
            print(f"running {v} ...", file=sys.stderr, flush=True)
            cmd = [
                sys.executable,
                __file__,
                "--child",
                v,
                "--workdir",
                str(work),
                "--model-path",
                str(args.model_path),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--threads",
                str(args.threads),
                "--batch-size",
                str(args.batch_size),
                "--max-length",
                str(args.max_length),
                "--micro-batch-tokens",
                str(args.micro_batch_tokens),
            ]
            if subprocess.run(cmd, env=worker_env(args.threads)).returncode != 0:
                print(f"{v} failed (see above); left out of the table", file=sys.stderr)
                continue
            results[v] = json.loads((work / f"{v}.json").read_text())
    tokens = sum(
        len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
        for r in sft_rows
    ) / len(pairs)
    print(
        f"\n{Path(args.model_path).name}, LoRA r=16, {args.batch_size} pairs per step (~{tokens:.0f} tokens per "
        f"pair, both answers), {args.steps} measured steps after {args.warmup} warm-up, {args.threads} threads, "
        "fp32\n"
    )
    print("| variant | s/step | tokens/s | time per token, x SFT | peak RSS |\n|---|---|---|---|---|")
    sft = results.get("sft")
    dpo = results.get("dpo")
    if dpo and dpo.get("reference_seconds") is not None:
        # The reference pass runs once before step 1 over every pair of the run (here: one epoch of
        # exactly the measured pairs); spread over the epoch's steps it is the honest per-step cost.
        extra = dpo["reference_seconds"] / dpo["total_steps"] / (dpo["seconds"] / dpo["steps"])
        results["dpo + reference pass (1 epoch)"] = dict(dpo, seconds=dpo["seconds"] * (1 + extra))
    for name, r in results.items():
        per = r["seconds"] / r["steps"]
        speed = r["tokens"] / r["seconds"] if r.get("tokens") else None
        # TRL reports no token counts: its steps see the same pairs, so compare its time per step.
        ratio = (
            (sft["tokens"] / sft["seconds"] / speed if speed else per / (sft["seconds"] / sft["steps"]))
            if sft
            else None
        )
        print(
            f"| {name} | {per:.2f} | {f'{speed:.0f}' if speed else '-'} | "
            f"{f'{ratio:.2f}' if ratio else '-'} | {r['peak_rss'] / 2**30:.2f} GiB |"
        )
    if dpo and sft:
        print("\nDPO vs SFT on the same tokens: target <= 1.4x")
    if dpo and dpo.get("reference_seconds") is not None:
        print(
            f"tunegate DPO's one reference pass: {dpo['reference_seconds']:.2f} s for the {dpo['total_steps']} steps' "
            "pairs; over n epochs its share per step is 1/n of the row above."
        )


if __name__ == "__main__":
    main()
