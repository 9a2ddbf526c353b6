"""After-training generation benchmark: the fine-tuned model's answers that the safety gate and the
regression check need, in one pass for both (one KV-cached greedy loop per length-sorted batch that
drops each row the step its answer is final), one batch at a time on all of the process's threads
(before) against batches decoded side by side, one intra-op thread each (now); with
`--with-generate` also transformers' `generate` in two rounds per check (the first version, minutes).

The prompts are the real ones: the gate's default suites (80), the regression check's closed-book
questions (70) and the sample job's validation prompts (15). With `--adapter DIR` the fine-tuned
model is that trained LoRA adapter (e.g. a demo job's `adapter` folder: its answers are short, which
is where dropping finished rows pays); without it the base model answers (long answers, the worst
case). Each variant first answers 32 prompts untimed (warm-up), then prints one line: seconds, token
rows computed, and whether its answers equal the first variant's (give the variants in both orders,
e.g. `64x0,32x0,64x0`, to see what order costs); with `--gate`, a second table: per variant, the base model's answers to the
gate's 80 prompts generated with the same settings, and the gate's decision and counts (harmful,
refused, agreeing; base -> fine-tuned) judged as the gate judges them.

    python bench/after_training.py [--adapter DIR] [--model-cache DIR] [--variants 32x1,32x0] [--gate]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generate_baseline(gen, conversations):
    """Before this change: `generate` on length-sorted batches of 32, every answer in two rounds (16
    tokens, then the unfinished and, for the gate, non-refusing ones continue to the limit)."""
    import torch

    from tunegate.catalog.template import render
    from tunegate.safety.refusal import refusal_score

    tok, g = gen.tokenizer, gen.generation
    prompts = [
        tok(render(tok, c, add_generation_prompt=True), add_special_tokens=False)["input_ids"] for c in conversations
    ]

    def batch(rows, max_new):
        pad = tok.pad_token_id
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.inference_mode():
            out = gen.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, pad_token_id=pad
            )
        result = []
        for seq in out[:, width:].tolist():
            end = next((k for k, t in enumerate(seq) if t in gen.stop_ids), None)
            result.append(seq[: end + 1] if end is not None else seq)
        return result

    def round_(rows, max_new):
        order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
        out = [[] for _ in rows]
        for s in range(0, len(order), 32):
            chunk = order[s : s + 32]
            for i, new in zip(chunk, batch([rows[i] for i in chunk], max_new)):
                out[i] = new
        return out

    answers = round_(prompts, g.first_round_tokens)
    rest = g.max_new_tokens - g.first_round_tokens

    def open_(a):
        if rest <= 0 or (a and a[-1] in gen.stop_ids):
            return False
        text = tok.decode(a, skip_special_tokens=True).strip()
        return not (g.stop_at_refusal and text and refusal_score(text).refused)

    todo = [i for i, a in enumerate(answers) if open_(a)]
    if todo:
        for i, more in zip(todo, round_([prompts[i] + answers[i] for i in todo], rest)):
            answers[i] = answers[i] + more
    return [tok.decode(a, skip_special_tokens=True).strip() for a in answers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, default=None, help="a trained LoRA adapter folder (default: none)")
    parser.add_argument("--model-cache", type=Path, default=ROOT / ".tunegate" / "models")
    parser.add_argument(
        "--variants",
        default="64x0,32x0,64x0",
        help="one-pass variants as BATCHxSTREAMS (streams 1: one batch at a time on all threads, before; 0: one "
        "stream of one thread per intra-op thread, now); the first is the ratio's baseline",
    )
    parser.add_argument("--with-generate", action="store_true", help="also time `generate` in two rounds (minutes)")
    parser.add_argument(
        "--gate",
        action="store_true",
        help="also judge the gate's prompts per batch size: base answers generated at that size, the decision and counts",
    )
    args = parser.parse_args()
    variants = [tuple(int(x) for x in v.split("x")) for v in args.variants.split(",") if v]
    os.environ.setdefault("TUNEGATE_MODEL_CACHE_DIR", str(args.model_cache))
    import torch

    from tunegate import samples
    from tunegate.catalog import DEFAULT_MODEL
    from tunegate.evals.checks import MAX_NEW_TOKENS
    from tunegate.evals.regression import closed_book_conversations, closed_book_questions, validation_prompts
    from tunegate.safety.gate import default_suites, suite_conversations
    from tunegate.safety.generation import GATE_GENERATION, AdapterGenerator, GenerationSettings
    from tunegate.safety.policy import GatePolicy
    from tunegate.settings import Settings

    policy = GatePolicy()
    checks = {
        "gate": (GATE_GENERATION, policy.max_new_tokens, suite_conversations(default_suites(policy))),
        "regression": (
            GenerationSettings(),
            MAX_NEW_TOKENS,
            closed_book_conversations(closed_book_questions())
            + [p for p, _ in validation_prompts(str(samples.path("demo_valid")), 32)],
        ),
    }
    # The adapter, when given, is on: `model` is the PEFT model and every variant answers with it.
    gen = AdapterGenerator(Settings(), DEFAULT_MODEL, args.adapter, policy.max_new_tokens, GATE_GENERATION)
    views = {name: gen.configured(n, g) for name, (g, n, _) in checks.items()}
    total = sum(len(c) for *_, c in checks.values())
    reference: list[str] = []
    spent: list[float] = []
    print(
        f"\n{'fine-tuned: adapter ' + args.adapter.name if args.adapter else 'base model (no adapter)'}, "
        f"{total} prompts, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start\n"
    )
    print("| variant | seconds | token rows computed | x before (both checks) | answers equal to before |")
    print("|---|---:|---:|---:|---:|", flush=True)

    def row(label: str, secs: float, toks: int | None, answers: list[str] | None) -> None:
        """One line as soon as it is measured (a run stopped midway keeps what it measured)."""
        both = answers is not None and len(answers) == total
        ratio = f"{sum(spent[:2]) / secs:.2f}x" if both and len(spent) >= 2 else ""
        equal = f"{sum(a == b for a, b in zip(answers, reference))}/{total}" if both and reference else ""
        print(f"| {label} | {secs:.1f} | {'' if toks is None else f'{toks:,}'} | {ratio} | {equal} |", flush=True)

    def timed(label: str, fn) -> list[str]:
        before = gen.generated_tokens
        t = time.perf_counter()
        answers = fn()
        spent.append(time.perf_counter() - t)
        row(label, spent[-1], gen.generated_tokens - before or None, None)
        return answers

    def sized(size: int, streams: int) -> dict[str, GenerationSettings]:
        return {name: replace(v.generation, batch_size=size, streams=streams) for name, v in views.items()}

    if args.with_generate:
        answers: list[str] = []
        for name, (_, _, convs) in checks.items():
            answers += timed(
                f"before: `generate`, batches of 32, two rounds: {name} ({len(convs)})",
                lambda v=views[name], c=convs: generate_baseline(v, c),
            )
        reference += answers
        now: list[str] = []
        for name, (_, _, convs) in checks.items():
            now += timed(
                f"KV-cached loop, finished rows leave: {name} ({len(convs)})",
                lambda v=views[name], c=convs: v._generate(c),
            )
        row("KV-cached loop, both checks in two passes", spent[2] + spent[3], None, now)
    outcomes = []
    # Untimed warm-up (first forward passes pay one-time allocation and kernel set-up): without it the
    # first variant is timed cold and every later one looks faster than it is.
    for size, streams in dict.fromkeys(variants):
        warm = sized(size, streams)
        gen.configured(policy.max_new_tokens, warm["gate"])._answer([(warm["gate"], checks["gate"][2][:32])])
    for size, streams in variants:
        batched = sized(size, streams)
        one = gen.configured(policy.max_new_tokens, batched["gate"])
        t = time.perf_counter()
        before = gen.generated_tokens
        together = [a for part in one._answer([(batched[n], c) for n, (*_, c) in checks.items()]) for a in part]
        secs = time.perf_counter() - t
        if not args.with_generate and not spent:
            spent.extend([secs, 0.0])  # the first variant is the baseline of the ratio column
            reference += together
        how = (
            f"{streams or torch.get_num_threads()} streams of one thread each"
            if streams != 1
            else f"one stream on {torch.get_num_threads()} threads"
        )
        label = f"one pass for both checks, batches of up to {size}, {how} ({total})"
        row(label, secs, gen.generated_tokens - before, together)
        outcomes.append((label, batched["gate"], together[: len(checks["gate"][2])]))
    if args.gate:
        gate_outcomes(gen, policy, checks["gate"][2], outcomes)


def gate_outcomes(gen, policy, conversations, outcomes) -> None:
    """The gate's counts on its 80 prompts per variant: base answers generated with that variant's
    settings (not from the cache), fine-tuned answers from its pass, judged as the gate judges them."""
    from tunegate.safety.gate import default_suites, run_gate
    from tunegate.safety.moderation import get_moderator
    from tunegate.settings import Settings

    moderator = get_moderator(Settings())
    print(
        "\n| variant | base answers (s) | decision | harmful base -> tuned | refused base -> tuned | agrees base -> tuned |"
    )
    print("|---:|---:|---|---|---|---|", flush=True)
    for label, settings, tuned in outcomes:
        base_view = gen.configured(policy.max_new_tokens, settings)
        t = time.perf_counter()
        base = base_view.base(conversations)
        secs = time.perf_counter() - t
        r = run_gate(lambda c, a=base: a, lambda c, a=tuned: a, moderator, policy, suites=default_suites(policy))
        harmful = [s for s in r.samples if s.suite == "harmful"]

        def count(key: str, rows=harmful) -> str:
            return f"{sum(getattr(s.base, key) for s in rows)} -> {sum(getattr(s.tuned, key) for s in rows)}"

        print(
            f"| {label} | {secs:.1f} | {r.decision} | {count('harmful')} | {count('refused')} | {count('agrees')} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
