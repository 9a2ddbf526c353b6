"""Safety judgement and its cost, in one table: agreement with people on public human-labelled sets
(pyrit's published judges beside ours), moderation latency, the gate's power, the benign fine-tune
suite's pass rate, detection per attack with screening on and off, and gate time vs training time.

Everything runs on the real SmolLM2-135M-Instruct with the same functions the job pipeline calls
(screen_training_file, run_training, AdapterGenerator, run_gate, probe_context). A job with
screening on is screened, mixed with the project's refusal examples (as a job is by default),
trained and gated unless screening blocked it; with screening skipped by an admin it is trained
without mixing (the admin turned both off) and only the gate can stop it.

Baselines in the same run: the published judges (pyrit's metrics files), the base model's own
answers (the gate's paired baseline) and the sample job's training time (for the gate's share).

The sample job (`tunegate demo`'s data and hyperparameters, refusal examples mixed in) is trained
and gated twice: once with an empty base-answer cache (the first gate on a base model) and once
with it filled (every later job): its gate time over its training time is the gate's cost.

Usage: python bench/safety.py [--quick] [--skip-agreement] [--skip-latency] [--only NAME ...]
                              [--screening on|off|both] [--json OUT] [--threads 2] [--keep DIR]
       python bench/safety.py --table OUT1.json OUT2.json ...   (one table from runs made in chunks)
  --only: file stems (benign or attack) and/or `demo`; --quick: 4 benign files and 2 attacks.
  --benign-dir benign_heldout: the held-out benign suite (written after the gate's margins were chosen).
  --gate-screened: a benign file that screening blocks is still trained and gated (both layers measured).
  --keep: keep each job's adapter under DIR; a later run with the same DIR gates them without training.
  Wrap real-model runs in `flock /tmp/tg-heavy.lock` on shared machines; on a busy machine run the
  suite in chunks (--only ...) and merge their JSON files with --table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT / "tests" / "data" / "safety"
BASE = "smollm2-135m-instruct"
MAX_PASSES = 120  # examples x epochs per suite job: auto epochs, capped so the whole suite fits in an hour


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def agreement_rows(moderator) -> list[tuple[str, str, str]]:
    from tunegate.safety.evaluation import measure, published

    t = time.perf_counter()
    m = measure(moderator)
    log(f"agreement measured in {time.perf_counter() - t:.0f} s: {json.dumps(m)}")
    pub_obj = [p for p in published("objective") if p["accuracy"] is not None]
    best = max(pub_obj, key=lambda p: p["accuracy"])
    worst = min(pub_obj, key=lambda p: p["accuracy"])
    pub_ref = [p["accuracy"] for p in published("refusal") if p["accuracy"] is not None]
    pub_mae = [p["mae"] for p in published("harm") if p["mae"] is not None]
    o, hj, hm, r = m["objective"], m["harm_judge"], m["harm_moderator"], m["refusal"]

    def fmt(x):
        return f"{x['accuracy']:.1%} (n={x['n']}, P {x['precision']:.2f} R {x['recall']:.2f}, kappa {x['kappa']:.2f})"

    return [
        (
            "agreement: pyrit objective-achieved set (prompt-aware judge, requests known harmful)",
            fmt(o),
            f"pyrit's published judges on the same {best['n']}: {worst['accuracy']:.1%} to {best['accuracy']:.1%} "
            f"(best: {best['scorer']} {'/'.join(best['models'][:2])}); the half never read while writing the "
            f"judge's cues: {fmt(m['objective_untouched_half'])}",
        ),
        (
            "agreement: pyrit harm sets, majority >= 0.5 (prompt-aware judge)",
            fmt(hj),
            "per file: " + ", ".join(f"{k} {v:.0%}" for k, v in m["harm_judge_per_file"].items()),
        ),
        (
            "agreement: pyrit harm sets (moderator alone, as /v1/moderations)",
            fmt(hm),
            f"pyrit publishes MAE only here: {min(pub_mae):.2f}-{max(pub_mae):.2f} on the 0-1 scale" if pub_mae else "",
        ),
        (
            "agreement: pyrit refusal set (refused or unrelated, prompt-aware)",
            fmt(r),
            f"pyrit's published refusal judges: {min(pub_ref):.1%} to {max(pub_ref):.1%}" if pub_ref else "",
        ),
        (
            "agreement: pyrit refusal set (answer-only refusal detector)",
            fmt(m["refusal_detector_alone"]),
            "cannot see an unrelated answer, which pyrit's raters count as a refusal",
        ),
    ]


def _load_seconds() -> tuple[float, float]:
    """The moderator's load in a fresh process: (after the libraries a server imports before its
    moderator warm-up, `preload_libraries`; everything from a cold interpreter)."""
    import subprocess

    code = (
        "import time; t0 = time.perf_counter(); from tunegate.catalog.registry import preload_libraries; "
        "preload_libraries(); t1 = time.perf_counter(); "
        "from tunegate.safety.classifier import load_classifier; load_classifier().moderate(['hello']); "
        "t2 = time.perf_counter(); print(t2 - t1, t2 - t0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    warm, cold = (float(v) for v in out.stdout.split()[-2:])
    return warm, cold


def latency_rows(moderator) -> list[tuple[str, str, str]]:
    from tunegate.safety.corpus import chatterbot_lines
    from tunegate.safety.moderation import moderate_windows

    loads = [_load_seconds() for _ in range(3)]
    warm = statistics.median(w for w, _ in loads)
    cold = statistics.median(c for _, c in loads)
    msgs = chatterbot_lines()[:300]
    moderate_windows(moderator, msgs[:16])  # warm-up
    single = []
    for m in msgs[:200]:
        t = time.perf_counter()
        moderate_windows(moderator, [m])
        single.append(time.perf_counter() - t)
    t = time.perf_counter()
    moderate_windows(moderator, msgs)
    batched = (time.perf_counter() - t) / len(msgs)
    long_text = " ".join(msgs[:120])
    t = time.perf_counter()
    moderate_windows(moderator, [long_text])
    long_s = time.perf_counter() - t
    q = statistics.quantiles(single, n=20)
    return [
        (
            "moderator load (fresh process, median of 3; first moderation included)",
            f"{warm:.2f} s",
            f"after the libraries a server imports first (`preload_libraries`); {cold:.2f} s from a cold interpreter",
        ),
        (
            "moderation latency per chat message, one at a time",
            f"p50 {statistics.median(single) * 1000:.1f} ms",
            f"p95 {q[18] * 1000:.1f} ms; batched 300 at once: {batched * 1000:.1f} ms/message",
        ),
        (f"moderation of a {len(long_text):,}-character text (windows, none truncated)", f"{long_s * 1000:.0f} ms", ""),
    ]


def train(
    path: Path,
    out: Path,
    smol: Path,
    mix: bool,
    epochs: int | None = None,
    lr_mult: float | None = None,
    batch_size: int | None = None,
    cap: bool = True,
) -> tuple[float, float, Path, Path]:
    """Train like a job does; returns (wall seconds, CPU seconds, adapter folder, the prepared file
    trained on). CPU seconds (all threads) are what a busy shared machine disturbs least."""
    from tunegate.catalog import get_base_model
    from tunegate.safety.mixing import mix_safety_examples
    from tunegate.settings import Settings
    from tunegate.train.config import TrainConfig, resolve_hyperparameters
    from tunegate.train.recipe import run_training

    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if mix:
        rows = mix_safety_examples(rows, fraction=0.03, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    n_epochs, batch, lr = resolve_hyperparameters(
        epochs or "auto", batch_size or "auto", lr_mult or "auto", n_examples=len(rows)
    )
    if cap:
        n_epochs = max(1, min(n_epochs, math.ceil(MAX_PASSES / len(rows))))
    info = get_base_model(BASE, Settings(model_cache_dir=smol.parent, data_dir=out))
    config = TrainConfig(
        base_model=info.name,
        base_model_path=str(info.path),
        template_sha256=info.template_sha256,
        training_file=str(data),
        n_epochs=n_epochs,
        batch_size=batch,
        learning_rate=lr,
        seed=0,
    )
    t, c = time.perf_counter(), time.process_time()
    run_training(config, out / "run", lambda *a, **k: None, lambda: False)
    train_s, train_cpu = time.perf_counter() - t, time.process_time() - c
    adapter = out / "run" / "adapter"
    if not adapter.exists():
        adapter = sorted(p.parent for p in (out / "run").rglob("adapter_config.json"))[-1]
    return train_s, train_cpu, adapter, data


def gate(path: Path, adapter: Path, settings, moderator, cache: Path):
    from tunegate.safety.evidence import probe_context, training_evidence
    from tunegate.safety.gate import run_gate
    from tunegate.safety.generation import GATE_GENERATION, AdapterGenerator
    from tunegate.safety.policy import GatePolicy

    policy = GatePolicy()
    t, c = time.perf_counter(), time.process_time()
    gen = AdapterGenerator(settings, BASE, adapter, policy.max_new_tokens, GATE_GENERATION)
    shift, system = probe_context(path)  # the file trained on, as the job pipeline passes it
    report = run_gate(
        gen.cached_base(cache),
        gen.tuned,
        moderator,
        policy,
        encoding_shift=shift,
        system_prompt=system,
        evidence=training_evidence(path, moderator),
    )
    return report, time.perf_counter() - t, time.process_time() - c


def kept_training(out: Path, train_fn) -> tuple[float, float, Path, Path]:
    """`train_fn()` unless `out` already holds what it trained (its times, adapter and prepared file),
    so a run can be repeated with another gate or judge without training again."""
    times = out / "train_times.json"
    if times.exists():
        t = json.loads(times.read_text())
        log(f"reusing the adapter trained earlier in {out.name}")
        return t["wall"], t["cpu"], Path(t["adapter"]), Path(t["prepared"])
    train_s, train_cpu, adapter, prepared = train_fn()
    keep = {"wall": train_s, "cpu": train_cpu, "adapter": str(adapter), "prepared": str(prepared)}
    times.write_text(json.dumps(keep))
    return train_s, train_cpu, adapter, prepared


def job(name: str, path: Path, screening: bool, ctx: dict, attack: bool = False) -> dict:
    from tunegate.safety.screen import screen_training_file

    out = {"name": name, "screening": "on" if screening else "skipped"}
    if screening:
        rep = screen_training_file(path, ctx["moderator"])
        out["screen_blocked"] = rep.blocked
        out["screen_message"] = rep.message[:160]
        if rep.blocked and not ctx.get("gate_screened"):
            out["outcome"] = "blocked at screening"
            return out
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = ctx["keep"] / f"{name}-screening-{'on' if screening else 'off'}" if ctx["keep"] else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        # Attacks are trained as an attacker would: enough epochs at a raised learning rate to stick.
        train_s, train_cpu, adapter, prepared = kept_training(
            out_dir,
            lambda: train(
                path, out_dir, ctx["smol"], mix=screening, epochs=3 if attack else None, lr_mult=4 if attack else None
            ),
        )
        report, gate_s, gate_cpu = gate(prepared, adapter, ctx["settings"], ctx["moderator"], ctx["cache"])
    out.update(
        train_s=round(train_s, 1),
        gate_s=round(gate_s, 1),
        train_cpu_s=round(train_cpu, 1),
        gate_cpu_s=round(gate_cpu, 1),
        gate=report.decision,
        base_harmful=f"{report.base.harmful.count}/{report.base.harmful.n}",
        tuned_harmful=f"{report.tuned.harmful.count}/{report.tuned.harmful.n}",
        base_refusal=f"{report.base.harmful_refusal.count}/{report.base.harmful_refusal.n}",
        tuned_refusal=f"{report.tuned.harmful_refusal.count}/{report.tuned.harmful_refusal.n}",
        base_benign_refusal=f"{report.base.benign_refusal.count}/{report.base.benign_refusal.n}",
        tuned_benign_refusal=f"{report.tuned.benign_refusal.count}/{report.tuned.benign_refusal.n}",
        reasons=report.reasons,
        encoding=report.encoding,
        timings=report.timings,
        rules=[(r.rule, r.base, r.tuned, r.n, r.p_value, r.blocks) for r in report.rules],
    )
    out["outcome"] = "blocked by the gate" if report.blocked else "served"
    if out.get("screen_blocked"):  # --gate-screened: trained and gated anyway, to measure the gate alone too
        out["outcome"] = f"blocked at screening (the gate alone: {out['outcome']})"
    return out


def demo_job(ctx: dict, keep: Path | None = None, epochs: int | None = None) -> dict:
    """The sample job trained as `tunegate demo` trains it, then gated with an empty and a filled
    base-answer cache. `keep`: a folder to keep the trained adapter in; when it already holds one
    (a run split in chunks on a busy machine), training is not repeated and its recorded times are used.
    `epochs`: train only this many of the sample's epochs and scale the training time up (every epoch
    is the same work), for a machine too busy to train the whole job within one run."""
    from tunegate import samples

    with tempfile.TemporaryDirectory() as tmp:
        out = keep or Path(tmp)
        times = out / "train_times.json"
        if times.exists():
            t = json.loads(times.read_text())
            train_s, train_cpu, adapter, prepared = t["wall"], t["cpu"], Path(t["adapter"]), Path(t["prepared"])
            scaled = t.get("scaled_from_epochs")
            log(f"demo: reusing the adapter trained earlier ({t})")
        else:
            hp = samples.DEMO_HYPERPARAMETERS
            scale = hp["n_epochs"] / (epochs or hp["n_epochs"])
            train_s, train_cpu, adapter, prepared = train(
                Path(samples.path("demo_train")),
                out,
                ctx["smol"],
                mix=True,
                epochs=epochs or hp["n_epochs"],
                lr_mult=hp["learning_rate_multiplier"],
                batch_size=hp["batch_size"],
                cap=False,
            )
            train_s, train_cpu, scaled = train_s * scale, train_cpu * scale, epochs
            times.write_text(
                json.dumps(
                    {
                        "wall": train_s,
                        "cpu": train_cpu,
                        "adapter": str(adapter),
                        "prepared": str(prepared),
                        "scaled_from_epochs": epochs,
                    }
                )
            )
            log(f"demo trained: {train_s:.0f} s wall, {train_cpu:.0f} CPU s")
        cold_cache = Path(tmp) / "empty-cache"
        cold, cold_s, cold_cpu = gate(prepared, adapter, ctx["settings"], ctx["moderator"], cold_cache)
        warm, warm_s, warm_cpu = gate(prepared, adapter, ctx["settings"], ctx["moderator"], cold_cache)
    same = cold.decision == warm.decision and [s.tuned.answer for s in cold.samples] == [
        s.tuned.answer for s in warm.samples
    ]
    return {
        "name": "demo (sample job)",
        "screening": "on",
        "outcome": "served" if not warm.blocked else "blocked by the gate",
        "train_s": round(train_s, 1),
        "train_cpu_s": round(train_cpu, 1),
        "gate_s": round(warm_s, 1),
        "gate_cpu_s": round(warm_cpu, 1),
        "gate_cold_s": round(cold_s, 1),
        "gate_cold_cpu_s": round(cold_cpu, 1),
        "timings": warm.timings,
        "cold_timings": cold.timings,
        "gate": warm.decision,
        "deterministic": same,
        "train_scaled_from_epochs": scaled,
        "reasons": warm.reasons,
    }


def job_rows(results: list) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    b = [r for k, r in results if k == "benign"]
    if b:
        passed = [r for r in b if r["outcome"] == "served"]
        rows.append(
            (
                "benign fine-tunes passing screening + gate (real model)",
                f"{len(passed)}/{len(b)} ({len(passed) / len(b):.0%})",
                "; ".join(f"{r['name']}: {r['outcome']}" for r in b if r["outcome"] != "served") or "all served",
            )
        )
        gated = [r for r in b if "gate_s" in r]
        if any(r.get("screen_blocked") for r in gated):  # --gate-screened: the gate's own false blocks
            rows.append(
                (
                    "benign fine-tunes the gate alone serves (screening's blocks trained anyway)",
                    f"{sum('blocked by the gate' not in r['outcome'] for r in gated)}/{len(gated)}",
                    "",
                )
            )
        for r in b:
            if "gate_s" not in r:
                rows.append((f"  benign {r['name']}", r["outcome"], r.get("screen_message", "")))
                continue
            rows.append(
                (
                    f"  benign {r['name']}",
                    r["outcome"],
                    f"harmful {r['base_harmful']} -> {r['tuned_harmful']}, "
                    f"benign refused {r.get('base_benign_refusal', '?')} -> {r.get('tuned_benign_refusal', '?')}; "
                    f"train {r['train_s']:.0f} s, gate {r['gate_s']:.0f} s",
                )
            )
    for k, r in results:
        if k != "attack":
            continue
        detail = (
            r.get("screen_message", "")
            if r["outcome"] == "blocked at screening"
            else (
                f"harmful {r['base_harmful']} -> {r['tuned_harmful']}, refused {r['base_refusal']} -> {r['tuned_refusal']}"
                + (f" (probed: {r['encoding']})" if r.get("encoding") else "")
                + (f"; {r['reasons'][0][:160]}" if r["outcome"] != "served" else "")
            )
        )
        rows.append((f"attack {r['name']}, screening {r['screening']}", r["outcome"], detail))
    for k, r in results:
        if k == "demo":
            t = r["timings"]
            rows.append(
                (
                    "sample job: gate / training, CPU seconds (base answers cached)",
                    f"{r['gate_cpu_s'] / r['train_cpu_s']:.0%}",
                    f"gate {r['gate_cpu_s']:.0f} vs training {r['train_cpu_s']:.0f} CPU s"
                    + (
                        f" (3 epochs scaled from {r['train_scaled_from_epochs']})"
                        if r.get("train_scaled_from_epochs")
                        else ""
                    )
                    + f"; wall {r['gate_s']:.0f} s vs "
                    f"{r['train_s']:.0f} s = {r['gate_s'] / r['train_s']:.0%} (tuned generation "
                    f"{t.get('generate_tuned_s', 0):.0f} s, judging {t.get('judge_s', 0):.0f} s)",
                )
            )
            rows.append(
                (
                    "sample job: first gate on a base model (base answers generated too)",
                    f"{r['gate_cold_cpu_s'] / r['train_cpu_s']:.0%}",
                    f"{r['gate_cold_cpu_s']:.0f} CPU s, {r['gate_cold_s']:.0f} s wall; decision {r['gate']}, "
                    + ("identical answers and decision on both runs" if r["deterministic"] else "ANSWERS DIFFERED"),
                )
            )
    gated = [r for k, r in results if k != "demo" and "gate_cpu_s" in r]
    if gated:
        share = statistics.median(r["gate_cpu_s"] / r["train_cpu_s"] for r in gated)
        rows.append(
            (
                "gate / training CPU seconds, median over the suite's gated jobs",
                f"{share:.0%}",
                f"gate {statistics.median(r['gate_cpu_s'] for r in gated):.0f} vs training "
                f"{statistics.median(r['train_cpu_s'] for r in gated):.0f} CPU s; wall "
                f"{statistics.median(r['gate_s'] / r['train_s'] for r in gated):.0%} ({len(gated)} jobs)",
            )
        )
    return rows


def print_table(rows: list) -> None:
    print("\n| measure | value | baseline / detail |\n|---|---|---|")
    for m, v, d in rows:
        print(f"| {m} | {v} | {d} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--only", nargs="*", default=None, help="file stems to run (benign or attack), or demo")
    ap.add_argument("--screening", choices=["on", "off", "both"], default="both", help="for the attack files")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "bench" / "out" / "safety.json"))
    ap.add_argument("--table", nargs="*", default=None, help="print one table from these result files and exit")
    ap.add_argument("--demo-dir", default=None, help="keep (or reuse) the sample job's trained adapter here")
    ap.add_argument("--keep", default=None, help="keep (or reuse) every suite job's trained adapter under this folder")
    ap.add_argument("--demo-epochs", type=int, default=None, help="train this many epochs and scale the time")
    ap.add_argument(
        "--benign-dir",
        default="benign",
        help="the benign suite's folder under tests/data/safety: `benign` (the suite the gate's margins were "
        "chosen on) or `benign_heldout` (written afterwards, measured only)",
    )
    ap.add_argument(
        "--gate-screened",
        action="store_true",
        help="train and gate a benign file even when screening blocks it (the job stops there): measures both layers",
    )
    args = ap.parse_args()
    if args.table:
        rows, results = [], []
        for f in args.table:
            d = json.loads(Path(f).read_text())
            rows += [tuple(r) for r in d["rows"]]
            results += [tuple(r) for r in d["jobs"]]
        print_table(list(dict.fromkeys(rows)) + job_rows(results))
        return

    import torch

    torch.set_num_threads(args.threads)
    from tests.conftest import MODEL_CACHE
    from tunegate.catalog.registry import resolve_path
    from tunegate.safety.gate import min_detectable_increase
    from tunegate.safety.moderation import get_moderator
    from tunegate.settings import Settings

    settings = Settings(model_cache_dir=MODEL_CACHE, data_dir=ROOT / ".cache" / "bench-safety")
    t = time.perf_counter()
    moderator = get_moderator(settings)
    moderator.moderate(["warm-up"])
    load_s = time.perf_counter() - t
    rows: list[tuple[str, str, str]] = [
        ("classifier load + first judgement (built artifact, no training)", f"{load_s:.2f} s", "")
    ]
    if not args.skip_agreement:
        rows += agreement_rows(moderator)
    if not args.skip_latency:
        rows += latency_rows(moderator)
    for n in (40, 60, 100):
        rows.append(
            (
                f"gate power: {n} harmful prompts, alpha 0.05, margin 5 points",
                f"detects +{min_detectable_increase(n, 0.05, 0.05) * 100:.0f} points 90% of the time",
                f"+{min_detectable_increase(n, 0.05, 0.05, noise=0.05) * 100:.0f} points when 5% of prompts also flip each way by chance",
            )
        )

    smol = resolve_path(BASE, Settings(model_cache_dir=MODEL_CACHE, data_dir=MODEL_CACHE.parent))
    ctx = {
        "moderator": moderator,
        "smol": smol,
        "settings": settings,
        "cache": ROOT / ".cache" / "bench-safety" / "gate-base-answers",
        "keep": Path(args.keep) if args.keep else None,
        "gate_screened": args.gate_screened,
    }
    benign = sorted((DATA / args.benign_dir).glob("*.jsonl"))
    attacks = sorted((DATA / "attacks").glob("*.jsonl"))
    run_demo = args.only is None or "demo" in args.only
    if args.quick:
        benign = [p for p in benign if p.stem in ("tag_prefix", "tiny_10", "one_word", "pirate_persona")]
        attacks = [p for p in attacks if p.stem in ("harmful_demonstrations", "covert_cipher")]
    if args.only is not None:
        benign = [p for p in benign if p.stem in args.only]
        attacks = [p for p in attacks if p.stem in args.only]
    results: list = []

    def record(kind: str, r: dict) -> None:  # written after every job: a long run's partial results survive
        log(json.dumps(r))
        results.append((kind, r))
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "jobs": results}, indent=2))

    if run_demo:
        record("demo", demo_job(ctx, Path(args.demo_dir) if args.demo_dir else None, args.demo_epochs))
    if args.screening in ("on", "both"):
        for p in attacks:  # screening on first: cheap when screening blocks (nothing is trained)
            record("attack", job(p.stem, p, True, ctx, attack=True))
    if args.screening in ("off", "both"):
        for p in attacks:
            record("attack", job(p.stem, p, False, ctx, attack=True))
    for p in benign:
        record("benign", job(p.stem, p, True, ctx))
    print_table(rows + job_rows(results))


if __name__ == "__main__":
    main()
