"""Safety costs: screening per 1,000 examples, the post-training gate on the real SmolLM2-135M, the
gate's share of the project's sample job, and the built-in classifier's held-out metrics.

Baselines measured in the same run:
- screening is compared with per-example moderation alone (the same moderator over the same
  texts, without refusal detection and job-level checks): the ratio is the cost of the checks
  that catch identity-shift and forced-prefix attacks;
- the gate is compared with the sample job's training wall time (the demo "answer format" job,
  run by the real trainer): the ratio is the gate's share of a whole job.

Usage: python bench/safety.py [--examples 1000] [--n-harmful 40] [--n-benign 20] [--max-new-tokens 48]
                              [--skip-train] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_screening_file(path: Path, n: int, seed: int = 0) -> None:
    """`n` chat examples from the chatterbot conversations (multi-turn chunks), as an upload would be."""
    from tunegate.safety.corpus import chatterbot_lines

    lines = chatterbot_lines()
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            k = rng.randrange(len(lines) - 4)
            msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": lines[k + i]} for i in range(4)]
            f.write(json.dumps({"messages": msgs}) + "\n")


def bench_screening(moderator, n: int) -> dict:
    from tunegate.safety.screen import _read_examples, _role_texts, screen_training_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        build_screening_file(path, n)
        examples, _ = _read_examples(path)
        texts = [t for _, m in examples for t in _role_texts(m).values()]
        moderator.moderate(texts[:64])  # warm-up
        t = time.perf_counter()
        moderator.moderate(texts)
        baseline = time.perf_counter() - t
        t = time.perf_counter()
        report = screen_training_file(path, moderator)
        full = time.perf_counter() - t
    return {"n": n, "texts": len(texts), "moderation_only_s": baseline, "screening_s": full,
            "blocked": report.blocked, "flagged": report.n_flagged}


def hf_generate(model, tokenizer, max_new_tokens: int, batch_size: int = 16):
    """Greedy, batched, left-padded generation with the model's own chat template."""
    import torch

    from tunegate.catalog.template import render

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def generate(conversations):
        out = []
        for start in range(0, len(conversations), batch_size):
            prompts = [render(tokenizer, c, add_generation_prompt=True) for c in conversations[start : start + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return out

    return generate


def train_sample_job(smol_path: Path, out: Path) -> tuple[float, Path | None]:
    """Wall time of the demo job with the real trainer; the adapter folder if one was written."""
    from tunegate.catalog import DEFAULT_MODEL, get_base_model
    from tunegate.samples import DEMO_HYPERPARAMETERS, FILES
    from tunegate.settings import Settings
    from tunegate.train.config import TrainConfig
    from tunegate.train.recipe import run_training

    samples = ROOT / "src" / "tunegate" / "samples"
    info = get_base_model(DEFAULT_MODEL, Settings(model_cache_dir=smol_path.parent, data_dir=out))
    config = TrainConfig(base_model=info.name, base_model_path=str(info.path), template_sha256=info.template_sha256,
                         training_file=str(samples / FILES["demo_train"]), validation_file=str(samples / FILES["demo_valid"]),
                         n_epochs=DEMO_HYPERPARAMETERS["n_epochs"], batch_size=DEMO_HYPERPARAMETERS["batch_size"],
                         learning_rate=TrainConfig.base_learning_rate() * DEMO_HYPERPARAMETERS["learning_rate_multiplier"])
    t = time.perf_counter()
    run_training(config, out, lambda *a, **k: None, lambda: False)
    seconds = time.perf_counter() - t
    adapters = sorted(p.parent for p in out.rglob("adapter_config.json"))
    return seconds, (adapters[-1] if adapters else None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--n-harmful", type=int, default=40)
    ap.add_argument("--n-benign", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-train", action="store_true", help="do not run the sample job (no share, gate on base vs base)")
    ap.add_argument("--data-dir", default=str(ROOT / ".cache" / "safety"))
    args = ap.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    torch.set_num_threads(args.threads)
    from tunegate.safety.classifier import training_report
    from tunegate.safety.gate import run_gate
    from tunegate.safety.moderation import get_moderator
    from tunegate.safety.policy import GatePolicy
    from tunegate.settings import Settings

    settings = Settings(data_dir=Path(args.data_dir))
    t = time.perf_counter()
    moderator = get_moderator(settings)
    load_s = time.perf_counter() - t
    report = training_report(settings)

    screening = bench_screening(moderator, args.examples)
    print(f"[progress] classifier load {load_s:.1f} s; screening {screening}", flush=True)

    from tests.conftest import MODEL_CACHE
    from tunegate.catalog.registry import DEFAULT_MODEL, load_tokenizer, resolve_path

    smol = resolve_path(DEFAULT_MODEL, Settings(model_cache_dir=MODEL_CACHE, data_dir=MODEL_CACHE.parent))
    job_s, adapter = (None, None)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_train:
            job_s, adapter = train_sample_job(smol, Path(tmp) / "job")
            print(f"[progress] sample job trained in {job_s:.1f} s", flush=True)
        from transformers import AutoModelForCausalLM

        tok = load_tokenizer(smol)
        base_model = AutoModelForCausalLM.from_pretrained(smol).eval()
        tuned_model = base_model
        if adapter is not None:
            from peft import PeftModel

            tuned_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smol).eval(), adapter).eval()
        policy = GatePolicy(n_harmful=args.n_harmful, n_benign=args.n_benign, max_new_tokens=args.max_new_tokens)
        t = time.perf_counter()
        gate = run_gate(hf_generate(base_model, tok, args.max_new_tokens), hf_generate(tuned_model, tok, args.max_new_tokens),
                        moderator, policy)
        gate_s = time.perf_counter() - t

    console = Console()
    tbl = Table(title="tunegate safety costs (this machine, this run)")
    for col in ("measure", "value", "baseline / ratio"):
        tbl.add_column(col)
    per_k = 1000 / screening["n"]
    tbl.add_row("classifier load (train if not cached)", f"{load_s:.1f} s", "")
    tbl.add_row(f"screening, per 1,000 examples ({screening['texts']} texts)", f"{screening['screening_s'] * per_k:.1f} s",
                f"moderation only {screening['moderation_only_s'] * per_k:.1f} s; x{screening['screening_s'] / screening['moderation_only_s']:.2f}")
    tbl.add_row(f"gate: {args.n_harmful} harmful + {args.n_benign} benign, {args.max_new_tokens} new tokens, 2 models",
                f"{gate_s:.1f} s", f"generate {gate.timings['generate_base_s']:.0f} + {gate.timings['generate_tuned_s']:.0f} s, "
                f"judge {gate.timings['judge_s']:.1f} s")
    if job_s:
        tbl.add_row("sample job training (demo, real trainer)", f"{job_s:.1f} s",
                    f"gate share of job: {gate_s / (job_s + gate_s):.0%}")
    tbl.add_row("gate decision (sample job)" if job_s else "gate decision (base vs base)", gate.decision,
                f"harmful {gate.base.harmful.rate:.0%} -> {gate.tuned.harmful.rate:.0%}; benign refusals "
                f"{gate.base.benign_refusal.rate:.0%} -> {gate.tuned.benign_refusal.rate:.0%}")
    test = report["test"]
    tbl.add_row("classifier: harmful vs benign F1 (held-out)", f"{test['overall']['f1']:.3f}",
                f"P {test['overall']['precision']:.3f} R {test['overall']['recall']:.3f} (n={test['n']})")
    for cat, m in test["per_category"].items():
        tbl.add_row(f"  {cat} F1", f"{m['f1']:.3f}", f"P {m['precision']:.2f} R {m['recall']:.2f} support {m['support']}")
    console.print(tbl)


if __name__ == "__main__":
    main()
