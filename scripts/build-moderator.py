"""Build the built-in moderation classifier into src/tunegate/safety/data/moderator/ (committed).

Fits the heads on the packaged corpus (see `tunegate.safety.corpus`), picks thresholds on the
validation split, writes the held-out report. Deterministic; a few CPU minutes the first time
(embedding ~4,500 texts), seconds after that (embeddings are cached per text in --cache-dir).
`--check` only says whether the committed artifact matches the current code and data.

Usage: python scripts/build-moderator.py [--cache-dir .cache/moderator-build] [--check]
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
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache" / "moderator-build"))
    ap.add_argument("--check", action="store_true", help="exit 1 when the artifact is missing or stale")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from tunegate.safety.classifier import ARTIFACT_DIR, artifact_built, build_key

    key = build_key()
    built = artifact_built() and json.loads((ARTIFACT_DIR / "report.json").read_text()).get("build_key") == key
    if args.check or built:
        print(f"moderator artifact {'up to date' if built else 'missing or stale'} (build key {key})")
        return 0 if built else 1
    import torch

    torch.set_num_threads(args.threads)
    from tunegate.safety.training import save, train

    t = time.perf_counter()
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    clf = train(cache_dir=cache)
    save(ARTIFACT_DIR, clf)
    test = clf.report["test"]["overall"]
    print(
        f"built {ARTIFACT_DIR} in {time.perf_counter() - t:.0f} s: held-out F1 {test['f1']:.3f} "
        f"(P {test['precision']:.3f}, R {test['recall']:.3f}); build key {key}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
