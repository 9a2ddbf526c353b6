"""Safety gate benchmark: the gate alone on one fine-tuned adapter, with remembered verdicts and the
contiguous LM-head input (now) against judging everything again and the strided head input (before),
alternated in one process.

What "now" reuses (`tunegate/safety/memo.py`): screening's moderation results for the training file
(screening runs before the job is queued, untimed here as in a job), and the base model's verdicts
on its cached answers to the gate's suites (judged once at set-up). What "before" does: moderates the
training file again for the gate's evidence and judges both models' answers. Both read the base
answers from the set-up cache and generate the fine-tuned answers to the gate's 80 prompts (no
regression-check prompts in the pass). Prints one row per variant and round, and whether the
reports (decision, rules, every verdict) are equal.

    python bench/gate.py --adapter DIR --training FILE [--rounds 2] [--model-cache DIR]

DIR: a trained adapter folder (e.g. a demo job's `adapter`); FILE: the file it was trained on (the
job folder's `training_mixed.jsonl`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--training", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model-cache", type=Path, default=ROOT / ".tunegate" / "models")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tunegate.catalog import DEFAULT_MODEL
    from tunegate.evals.prepare import prepare_base_answers
    from tunegate.safety.evidence import training_evidence
    from tunegate.safety.gate import run_gate
    from tunegate.safety.generation import GATE_GENERATION, AdapterGenerator, _one_matmul
    from tunegate.safety.jobs import gate_base_cache, gate_judgement_cache
    from tunegate.safety.memo import MemoModerator
    from tunegate.safety.moderation import get_moderator
    from tunegate.safety.policy import SafetyPolicy
    from tunegate.safety.screen import screen_training_file
    from tunegate.settings import Settings

    tmp = Path(tempfile.mkdtemp())
    settings = Settings(data_dir=tmp / "data", model_cache_dir=args.model_cache)
    prepare_base_answers(settings)  # set-up: base answers and their verdicts (untimed)
    moderator, policy = get_moderator(settings), SafetyPolicy()
    screened = MemoModerator(moderator)
    screen_training_file(args.training, screened, policy)  # before the queue in a job (untimed)
    screened.save(tmp / "memo.json")
    gen = AdapterGenerator(settings, DEFAULT_MODEL, args.adapter, policy.gate.max_new_tokens, GATE_GENERATION)
    head = gen.model.get_output_embeddings()

    def run(variant: str):
        head._forward_pre_hooks.clear()  # noqa: SLF001 - the bench toggles the hook the generator sets
        if variant == "now":
            head.register_forward_pre_hook(_one_matmul)
        gen._answers.clear()  # noqa: SLF001 - fine-tuned answers generated again in every run
        start = time.perf_counter()
        memo = MemoModerator.load(tmp / "memo.json", moderator) if variant == "now" else moderator
        report = run_gate(
            gen.cached_base(gate_base_cache(settings)),
            gen.tuned,
            moderator,
            policy,
            evidence=training_evidence(args.training, memo),
            base_judgements=gate_judgement_cache(settings) if variant == "now" else None,
        )
        return time.perf_counter() - start, report

    rows, reports = [], {}
    run("now")  # warm-up (untimed)
    for r in range(args.rounds):
        for variant in ("before", "now"):
            seconds, report = run(variant)
            reports.setdefault(variant, report)
            rows.append((r + 1, variant, seconds, report))
    print(f"\n{DEFAULT_MODEL}, adapter {args.adapter.name}, {len(reports['now'].samples)} gate prompts")
    print("\n| round | variant | gate (s) | fine-tuned answers (s) | judging (s) | training evidence (s) | decision |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r, variant, seconds, report in rows:
        t = report.timings
        print(
            f"| {r} | {variant} | {seconds:.2f} | {t['generate_tuned_s']:.2f} | {t['judge_s']:.2f} | "
            f"{t.get('training_evidence_s', 0):.2f} | {report.decision} |"
        )
    same = reports["now"].model_dump(exclude={"timings"}) == reports["before"].model_dump(exclude={"timings"})
    print(f"\nreports equal (decision, rules, every answer and verdict): {same}")
    best = {v: min(s for _, x, s, _ in rows if x == v) for v in ("before", "now")}
    print(
        f"gate, best round: before {best['before']:.2f} s, now {best['now']:.2f} s ({best['before'] / best['now']:.2f}x)"
    )


if __name__ == "__main__":
    main()
