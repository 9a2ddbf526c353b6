"""Training throughput: tunegate's trainer against TRL's SFTTrainer, in the same run, same machine.

Both train the same LoRA (rank, alpha, dropout, target modules) on the same tokenized examples
(multi-turn chats built from the chatterbot-corpus data package, truncated at the same length,
loss on assistant tokens only: TRL receives our assistant masks, since SmolLM2's template has no
`{% generation %}` markers), with the same effective batch, learning rate and schedule, fp32, no
gradient checkpointing. Each variant runs in its own subprocess, with glibc malloc and with
jemalloc (decay off, as tunegate's workers run), so every baseline gets the same allocator.

Reported per variant: seconds per optimizer step and loss-bearing tokens per second (median-free:
total over the measured steps, after warm-up), peak RSS of the process at the end of training,
model FLOPs utilisation (the FLOPs the step needs, counted the same way for both, over the fp32
matmul peak measured in this run), the mean training loss of the last steps and the loss on 32
held-out examples after training. TRL is a benchmark baseline only:

    pip install --no-deps trl==1.16.0 datasets==5.2.0 dill==0.4.0 multiprocess==0.70.18 xxhash pandas

Usage: python bench/train.py [--steps 10] [--long] [--variants tunegate,trl,tunegate-glibc,trl-glibc]
       (tunegate-peft and tunegate-peft-glibc: our trainer on PEFT's forward, for the fused forward's share)
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

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("tunegate", "trl", "tunegate-glibc", "trl-glibc")
# Also accepted: tunegate-peft[-glibc], our trainer with PEFT's forward instead of the fused one (train/fused.py).
# Two correct trainers differ in data order and dropout masks; a few measured steps apart, their held-out
# losses differ by well under this relative margin, a broken loss or gradient by far more.
HELD_OUT_TOLERANCE = 0.01
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------- data (parent process)


def build_data(tokenizer, n: int, seed: int, min_tokens: int = 154, max_tokens: int = 250) -> list[dict]:
    """Multi-turn chats of about min..max tokens from the chatterbot-corpus data package."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None:
        sys.exit("The chatterbot-corpus data package is missing: pip install --no-deps chatterbot-corpus==1.3.3")
    pairs = []
    for f in sorted(Path(spec.submodule_search_locations[0], "data", "english").glob("*.yml")):
        for conv in yaml.safe_load(f.read_text()).get("conversations") or []:
            texts = [str(t) for t in conv if t]
            pairs += [(texts[i], texts[i + 1]) for i in range(0, len(texts) - 1, 2)]
    rng = random.Random(seed)
    rng.shuffle(pairs)
    out, messages = [], []
    for user, assistant in pairs:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        length = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        if length > max_tokens:
            messages = []
        elif length >= min_tokens:
            out.append({"messages": messages})
            messages = []
            if len(out) == n:
                return out
    sys.exit(f"chatterbot-corpus gave only {len(out)} examples of {min_tokens}-{max_tokens} tokens")


def matmul_peak(threads: int, size: int = 2048, reps: int = 8) -> float:
    """Best fp32 matmul GFLOP/s of this machine right now."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


# ---------------------------------------------------------------- FLOPs the step needs


def step_flops(cfg: dict, lengths: list[int], n_loss: int, lora_r: int) -> float:
    """Forward + backward FLOPs of LoRA SFT on these examples, counted from the model shape only.

    Frozen base weights need no weight gradients: 2 (forward) + 2 (input gradients) FLOPs per
    weight per token; causal attention 2·H·hd·T² forward and twice that backward per layer;
    LoRA 6 FLOPs per adapter weight per token; the LM head only where the loss is (forward and
    input gradient). Work an implementation does beyond this (padding, a full-vocabulary head)
    is not counted, so MFU compares how well each turns needed work into speed.
    """
    d, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or d // heads
    shapes = [(d, heads * hd), (d, kv * hd), (d, kv * hd), (heads * hd, d), (d, inter), (d, inter), (inter, d)]
    linear = layers * sum(i * o for i, o in shapes)
    lora = layers * sum(lora_r * (i + o) for i, o in shapes)
    tokens = sum(lengths)
    attention = 6 * layers * heads * hd * sum(t * t for t in lengths)
    return 4 * linear * tokens + 6 * lora * tokens + attention + 4 * cfg["vocab_size"] * d * n_loss


# ---------------------------------------------------------------- child: one variant


def held_out_loss(model, examples) -> float:
    """Token-mean loss on assistant tokens, one example at a time with a plain forward (same for both)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in examples:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            keep = torch.tensor(mask[1:]).bool()
            total += float(F.cross_entropy(logits[keep], torch.tensor(ids[1:])[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def child(args) -> None:
    import torch

    from tunegate.catalog import load_tokenizer
    from tunegate.train.allocator import allocator_in_use
    from tunegate.train.data import epoch_batches, load_dataset

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    tokenizer = load_tokenizer(args.model_path)
    train = load_dataset(work / "train.jsonl", tokenizer, args.max_length)
    held = [(e.input_ids, e.loss_mask) for e in load_dataset(work / "eval.jsonl", tokenizer, args.max_length).examples]
    n_steps = args.warmup + args.steps
    step_ends: list[float] = []
    losses: list[float] = []
    batches: list[list] = []  # per step: examples as (length, n_loss)

    if args.child.startswith("tunegate"):
        from tunegate.registry import load_adapter_model

        if args.child.startswith("tunegate-peft"):
            import tunegate.train.lora

            tunegate.train.lora.fuse = lambda *a, **k: None  # every model takes PEFT's forward
        from tunegate.train.config import TrainConfig
        from tunegate.train.recipe import run_training

        config = TrainConfig(
            base_model="bench",
            base_model_path=str(args.model_path),
            template_sha256="",
            training_file=str(work / "train.jsonl"),
            n_epochs=1,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            seed=0,
            lora_r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.05,
            target_modules=tuple(TARGETS),
            max_seq_len=args.max_length,
            warmup_ratio=args.warmup_ratio,
            keep_checkpoints=1,
        )
        for batch in epoch_batches(len(train.examples), args.batch_size, 0, 0):
            batches.append([(len(train.examples[i].input_ids), train.examples[i].n_loss) for i in batch])

        def on_event(event):
            if event["type"] == "metrics":
                step_ends.append(time.perf_counter())
                losses.append(event["data"]["train_loss"])

        result = run_training(config, work / f"out-{args.child}", on_event, lambda: None)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        model = load_adapter_model(result.adapter_dir)
    else:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, TrainerCallback
        from trl import SFTConfig, SFTTrainer

        dataset = Dataset.from_dict(
            {
                "input_ids": [e.input_ids for e in train.examples],
                "assistant_masks": [e.loss_mask for e in train.examples],
            }
        )

        class Timer(TrainerCallback):
            def on_step_end(self, targs, state, control, **kw):
                step_ends.append(time.perf_counter())

            def on_log(self, targs, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    losses.append(float(logs["loss"]))

        sft = SFTConfig(
            output_dir=str(work / f"out-{args.child}"),
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1,
            max_steps=n_steps,
            learning_rate=args.lr,
            lr_scheduler_type="linear",
            warmup_steps=round(args.warmup_ratio * n_steps),
            weight_decay=0.0,
            max_grad_norm=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            bf16=False,
            fp16=False,
            use_cpu=True,
            gradient_checkpointing=False,
            max_length=args.max_length,
            packing=False,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
        lora = LoraConfig(
            r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM"
        )
        trainer = SFTTrainer(
            model=model,
            args=sft,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[Timer()],
        )
        collate = trainer.data_collator

        def counting_collator(features):
            out = collate(features)
            # The collator runs once per optimizer step, in order (the loader may run one batch ahead).
            batches.append(
                [(int(a.sum()), int((lab[1:] != -100).sum())) for a, lab in zip(out["attention_mask"], out["labels"])]
            )
            return out

        trainer.data_collator = counting_collator
        trainer.train()
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        model = trainer.model

    measured = range(args.warmup, n_steps)  # step k ends at step_ends[k]; warm-up steps are not timed
    seconds = step_ends[n_steps - 1] - step_ends[args.warmup - 1]
    model_cfg = json.loads((Path(args.model_path) / "config.json").read_text())
    flops = sum(
        step_flops(model_cfg, [t for t, _ in batches[k]], sum(n for _, n in batches[k]), args.lora_r) for k in measured
    )
    result = {
        "variant": args.child,
        "allocator": allocator_in_use(),
        "steps": len(measured),
        "seconds": seconds,
        "loss_tokens": sum(n for k in measured for _, n in batches[k]),
        "flops": flops,
        "peak_rss": peak_rss,
        "final_loss": sum(losses[-3:]) / len(losses[-3:]),
        "held_out_loss": held_out_loss(model, held),
    }
    (work / f"{args.child}.json").write_text(json.dumps(result))


# ---------------------------------------------------------------- parent: run all, print the table


def run_variant(args, variant: str, work: Path) -> dict:
    from tunegate.train.allocator import worker_env

    env = worker_env(args.threads, allocator=not variant.endswith("-glibc"))
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
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
        "--lora-r",
        str(args.lora_r),
        "--lr",
        str(args.lr),
        "--warmup-ratio",
        str(args.warmup_ratio),
    ]
    print(f"running {variant} ...", file=sys.stderr, flush=True)
    subprocess.run(
        cmd,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL if not args.verbose else None,
        stderr=subprocess.DEVNULL if not args.verbose else None,
    )
    return json.loads((work / f"{variant}.json").read_text())


def table(results: dict[str, dict], peak: float) -> str:
    rows = [
        "| variant | allocator | s/step | loss-bearing tok/s | MFU (model GFLOP/s) | peak RSS | "
        "final train loss | held-out loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        gflops = r["flops"] / r["seconds"] / 1e9
        rows.append(
            f"| {name} | {r['allocator']} | {r['seconds'] / r['steps']:.2f} | "
            f"{r['loss_tokens'] / r['seconds']:.0f} | {100 * gflops / peak:.0f}% ({gflops:.0f}) | "
            f"{r['peak_rss'] / 2**30:.2f} GiB | {r['final_loss']:.3f} | {r['held_out_loss']:.3f} |"
        )
    return "\n".join(rows)


def ratios(results: dict[str, dict]) -> list[str]:
    def speed(r):
        return r["loss_tokens"] / r["seconds"]

    lines = []
    for ours, theirs, label in (
        ("tunegate", "trl", "same allocator (jemalloc)"),
        ("tunegate-glibc", "trl-glibc", "same allocator (glibc: both as shipped)"),
        ("tunegate-peft", "trl", "PEFT's forward, same allocator (jemalloc)"),
        ("tunegate-peft-glibc", "trl-glibc", "PEFT's forward, same allocator (glibc)"),
    ):
        if ours in results and theirs in results:
            a, b = results[ours], results[theirs]
            delta = a["held_out_loss"] - b["held_out_loss"]
            lines.append(
                f"- {label}: {speed(a) / speed(b):.2f}x TRL's tokens/s (target >= 2.5x), "
                f"{a['peak_rss'] / b['peak_rss']:.2f}x its peak RSS (target <= 0.6x); held-out loss "
                f"{a['held_out_loss']:.4f} vs {b['held_out_loss']:.4f} ({delta:+.4f}, "
                f"{'within' if abs(delta) <= HELD_OUT_TOLERANCE * b['held_out_loss'] else 'OUTSIDE'} "
                f"the {HELD_OUT_TOLERANCE:.0%} noise band)"
            )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10, help="measured optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    p.add_argument("--long", action="store_true", help="40 measured steps (slower, less noisy)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: available CPUs)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.05)
    p.add_argument("--model-path", default=None, help="HF folder of the base model (default: the catalog's)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from tunegate.catalog import DEFAULT_MODEL, load_tokenizer
    from tunegate.catalog.registry import resolve_path
    from tunegate.settings import Settings
    from tunegate.threads import cores

    args.threads = args.threads or cores()
    if args.long:
        args.steps = 40
    if args.model_path is None:
        cache = ROOT / ".cache" / "models"
        settings = Settings(model_cache_dir=cache) if cache.exists() else Settings()
        args.model_path = resolve_path(DEFAULT_MODEL, settings)
    tokenizer = load_tokenizer(args.model_path)
    n_train = args.batch_size * (args.warmup + args.steps)
    data = build_data(tokenizer, n_train + 32, seed=0)
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-") as tmp:
        work = Path(tmp)
        for name, rows in (("train", data[:n_train]), ("eval", data[n_train:])):
            (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        peaks = [matmul_peak(args.threads)]
        results = {v: run_variant(args, v, work) for v in args.variants.split(",")}
        peaks.append(matmul_peak(args.threads))
    peak = max(peaks)
    print(
        f"\n{Path(args.model_path).name}, LoRA r={args.lora_r} on {len(TARGETS)} modules, batch {args.batch_size}, "
        f"max length {args.max_length}, {args.steps} measured steps after {args.warmup} warm-up, "
        f"{args.threads} threads, fp32; fp32 matmul peak {peak:.0f} GFLOP/s "
        f"(measured {peaks[0]:.0f} before, {peaks[1]:.0f} after)\n"
    )
    print(table(results, peak))
    print()
    print("\n".join(ratios(results)))


if __name__ == "__main__":
    main()
