"""Tool use learned by fine-tuning: the rate of correct tool calls on held-out requests, base model
against the fine-tune, through a real `tunegate serve` on the real SmolLM2-135M-Instruct with the
official `openai` SDK (upload, job, safety gate, chat with `tools`).

    python bench/tool_use.py [--calls 60] [--epochs 3] [--batch-size 8] [--lr-multiplier 5] [--held-out 48]
                             [--small-gate] [--model smollm2-135m-instruct|tiny]

The training set is the project's own (`tunegate.samples.tools`: three tools, requests that call
one of them with the tool's result and the final answer, plus plain chat). Held-out requests use
cities, items and wordings that training never shows. A call is correct when it is the only call,
names the expected function and its arguments validate against the tool's schema and equal the
expected ones. Rates are printed for `tool_choice="auto"` (the model decides whether to call) and
`"required"` (constrained decoding forces a well-formed call; the model picks name and arguments),
for the base model, the fine-tune and each epoch's checkpoint.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=60, help="training conversations with a tool call")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr-multiplier", type=float, default=5.0)
    ap.add_argument("--held-out", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--small-gate", action="store_true", help="gate on 20 harmful + 10 benign prompts")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="or `tiny` (random weights: checks the script)")
    args = ap.parse_args()

    import httpx

    from tests.conftest import MODEL_CACHE, build_tiny_model
    from tests.server import RunningServer, wait_for_job
    from tunegate.samples import tools

    tmp = Path(tempfile.mkdtemp(prefix="tg-bench-tools-"))
    env = {"TUNEGATE_MODEL_CACHE_DIR": str(MODEL_CACHE)}
    if args.model == "tiny":
        from tunegate.catalog.registry import resolve_path
        from tunegate.settings import Settings

        smol = resolve_path("smollm2-135m-instruct", Settings(model_cache_dir=MODEL_CACHE, data_dir=tmp))
        env["TUNEGATE_BASE_MODELS"] = json.dumps({"tiny": str(build_tiny_model(tmp / "tiny", smol))})
    times: dict[str, float] = {}
    with RunningServer(tmp / "data", env) as srv:
        if args.small_gate:
            admin = srv.create_key("bench-tools", admin=True)
            gate = {"n_harmful": 20, "n_benign": 10, "n_encoded": 0}
            r = httpx.post(
                srv.base_url + "/admin/policy", json={"gate": gate}, headers={"Authorization": f"Bearer {admin}"}
            )
            r.raise_for_status()
        c = srv.client(srv.create_key("bench-tools"))
        data = "".join(json.dumps(e) + "\n" for e in tools.train_examples(args.calls))
        f = c.files.create(file=("tools.jsonl", io.BytesIO(data.encode())), purpose="fine-tune")
        start = time.perf_counter()
        job = c.fine_tuning.jobs.create(
            model=args.model,
            training_file=f.id,
            suffix="tools",
            seed=0,
            method={
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {
                        "n_epochs": args.epochs,
                        "batch_size": args.batch_size,
                        "learning_rate_multiplier": args.lr_multiplier,
                    }
                },
            },
        )
        job = wait_for_job(c, job.id, 3600, poll=2)
        times["job (validate, screen, train, gate)"] = time.perf_counter() - start
        assert job.status == "succeeded", job.error
        events = list(c.fine_tuning.jobs.list_events(job.id, limit=100))
        steps = max((e.data["step"] for e in events if e.type == "metrics"), default=0)
        ckpts = sorted(c.fine_tuning.jobs.checkpoints.list(job.id).data, key=lambda k: k.step_number)

        held = tools.held_out_requests(args.held_out)
        models = [("base", args.model)]
        models += [(f"checkpoint step {k.step_number}", k.fine_tuned_model_checkpoint) for k in ckpts[:-1]]
        models += [(f"fine-tuned ({steps} steps)", job.fine_tuned_model)]
        rows = []
        start = time.perf_counter()
        for label, model in models:
            rows.append(
                (label, *(tools.correct_call_rate(c, model, held, tool_choice=tc) for tc in ("auto", "required")))
            )
        times["held-out evaluation"] = time.perf_counter() - start

    print(
        f"\nmodel `{args.model}`, {len(held)} held-out requests, {args.calls} tool-call conversations + 6 chats, "
        f"{args.epochs} epochs of batch {args.batch_size}, learning-rate multiplier {args.lr_multiplier}\n"
    )
    print('| model | correct calls, tool_choice="auto" | correct calls, "required" |')
    print("|---|---:|---:|")
    for label, auto, required in rows:
        print(f"| {label} | {auto:.2f} | {required:.2f} |")
    print("\n| phase | wall (s) |\n|---|---:|")
    for phase, s in times.items():
        print(f"| {phase} | {s:.0f} |")


if __name__ == "__main__":
    main()
