"""Write the base model's answers to the project's everyday requests into the moderator's data (committed).

The moderation classifier's harmless side had chit-chat, short requests and hand-written hard
negatives, but almost no assistant answers: how-to steps, explanations, stories and code in the
helpful register a fine-tuning file is written in. It learned that register itself as "illicit"
(game tips, a detective's reveal, "a substance that speeds up a reaction" were flagged). This
collects that register across everyday life: the packaged base model answers
every `data/everyday_tasks*.jsonl` (harmless requests, 40 domains a file, written for the project)
greedily, and `corpus.py` reads requests and answers as harmless examples.

Deterministic (greedy, fp32); a few CPU minutes per 480 requests. Answers already written (same
request, model and answer length) are kept, so adding a file answers only its requests. The output
is committed so that the moderator's build never needs the model.

Usage: python scripts/write-everyday-answers.py [--max-new-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()

    from tunegate.catalog import DEFAULT_MODEL
    from tunegate.jsonl import read_jsonl
    from tunegate.safety.corpus import DATA_DIR
    from tunegate.safety.generation import AdapterGenerator
    from tunegate.settings import Settings

    tasks = [t for path in sorted(DATA_DIR.glob("everyday_tasks*.jsonl")) for t in read_jsonl(path)]
    out = DATA_DIR / "everyday_answers.jsonl"
    kept = {
        r["request"]: r["answer"]
        for r in (read_jsonl(out) if out.exists() else [])
        if r.get("model") == DEFAULT_MODEL and r.get("max_new_tokens") == args.max_new_tokens
    }
    todo = [t["request"] for t in tasks if t["request"] not in kept]
    start = time.perf_counter()
    if todo:
        gen = AdapterGenerator(Settings(), DEFAULT_MODEL, None, args.max_new_tokens)
        answers = gen.base([[{"role": "user", "content": request}] for request in todo])
        kept.update((request, a.strip()) for request, a in zip(todo, answers))
    with out.open("w", encoding="utf-8") as f:
        for t in tasks:
            row = {**t, "answer": kept[t["request"]], "model": DEFAULT_MODEL, "max_new_tokens": args.max_new_tokens}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(
        f"{out.relative_to(ROOT)}: {len(tasks)} answers, {len(todo)} of them written now "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
