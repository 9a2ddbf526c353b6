"""The moderator alone, in one table: agreement with people on pyrit's public human-labelled sets
(pyrit's published judges beside ours), the held-out split of the build's own corpus per category,
load time and per-message latency. The moderation rows of `bench/safety.py` without training any
model: minutes, not hours.

Usage: python bench/moderation.py [--skip-agreement] [--threads 2] [--json bench/out/moderation.json]
                                  [--screen-dirs benign benign_heldout ...]
  --screen-dirs: benign suites (folders under tests/data/safety) screened file by file, as a job is:
  how many pass screening (no model is trained; `bench/safety.py` adds the gate).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))


def held_out_rows(classifier) -> list[tuple[str, str, str]]:
    from tunegate.safety.training import evaluate

    m = evaluate(classifier, "test")  # re-embeds the held-out texts: nothing is read from the report
    o = m["overall"]
    per = ", ".join(
        f"{c} P {v['precision']:.2f} R {v['recall']:.2f} (n={v['support']})" for c, v in m["per_category"].items()
    )
    return [
        (
            f"held-out test split of the build corpus ({m['n']} texts), harmful vs harmless",
            f"F1 {o['f1']:.3f} (P {o['precision']:.2f}, R {o['recall']:.2f})",
            per,
        )
    ]


def screening_rows(moderator, dirs: list[str]) -> list[tuple[str, str, str]]:
    """One row per benign suite: files passing screening, and the blocked ones with their findings."""
    from tunegate.safety.screen import screen_training_file

    rows = []
    for d in dirs:
        files = sorted((ROOT / "tests" / "data" / "safety" / d).glob("*.jsonl"))
        blocked = [(p.stem, r) for p in files if (r := screen_training_file(p, moderator)).blocked]
        detail = "; ".join(f"{name}: {r.n_flagged}/{r.n_examples} flagged" for name, r in blocked)
        rows.append((f"benign suite `{d}` passing screening", f"{len(files) - len(blocked)}/{len(files)}", detail))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "bench" / "out" / "moderation.json"))
    suites = sorted(p.name for p in (ROOT / "tests" / "data" / "safety").glob("benign*") if p.is_dir())
    ap.add_argument("--screen-dirs", nargs="*", default=suites, help="default: every benign suite")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from bench.safety import agreement_rows, latency_rows
    from tunegate.safety.moderation import get_moderator
    from tunegate.settings import Settings

    moderator = get_moderator(Settings(data_dir=ROOT / ".cache" / "bench-safety"))
    moderator.moderate(["warm-up"])
    rows = latency_rows(moderator) + held_out_rows(moderator.classifier) + screening_rows(moderator, args.screen_dirs)
    if not args.skip_agreement:
        rows += agreement_rows(moderator)
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<28}  {note}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
