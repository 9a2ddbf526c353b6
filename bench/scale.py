"""Scale-out benchmarks: data-parallel training (1 vs 2 ranks) and job throughput (1 vs 2 API servers
on one PostgreSQL; local vs Ray executor), each measured against its baseline in the same run.

`dp`: the real SmolLM2-135M, the same LoRA, data (chatterbot-corpus chats as in bench/train.py),
batch and sequence length, trained by one process with all cores and by 2 ranks (torch.distributed,
gloo, one core each, half the batch each). Reported: seconds per optimizer step and loss-bearing
tokens/s over the measured steps (after warm-up), and the share of rank 0's training time spent in
the gradient all-reduce.

`jobs`: N small jobs (tiny random model on the real tokenizer, few steps each, gate off by policy)
through the official SDK against 1 server, 2 servers sharing one PostgreSQL database and data
directory, and 1 server with the Ray executor on a local 2-node Ray cluster; jobs completed per hour
from the first create to the last finish. Every job must end `succeeded`, once.

Usage: python bench/scale.py dp [--steps 6] | jobs [--jobs 20] [--variants local1,local2,ray]
(run under `flock /tmp/tg-heavy.lock` on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


# ---------------------------------------------------------------- data-parallel training


def dp(args) -> None:
    from train import build_data  # bench/train.py: the same chats

    from tests.conftest import MODEL_CACHE
    from tunegate.catalog import load_tokenizer
    from tunegate.catalog.registry import resolve_path
    from tunegate.settings import Settings
    from tunegate.train.config import TrainConfig
    from tunegate.train.distributed import run_data_parallel
    from tunegate.train.recipe import run_training

    smol = resolve_path("smollm2-135m-instruct", Settings(model_cache_dir=MODEL_CACHE, data_dir=MODEL_CACHE.parent))
    tok = load_tokenizer(smol)
    total = args.steps + args.warmup
    work = Path(tempfile.mkdtemp(prefix="tg-bench-dp-"))
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in build_data(tok, args.batch * total, seed=1)))
    from tunegate.catalog import get_base_model

    base = get_base_model("smollm2-135m-instruct", Settings(model_cache_dir=MODEL_CACHE, data_dir=MODEL_CACHE.parent))
    config = TrainConfig(
        base_model="smollm2-135m-instruct",
        base_model_path=str(smol),
        template_sha256=base.template_sha256,
        training_file=str(data),
        n_epochs=1,
        batch_size=args.batch,
        max_seq_len=256,
        lora_dropout=0.0,
        seed=0,
        keep_checkpoints=1,
    )
    cores = os.cpu_count() or 2
    rows = []
    for name, world in (("1 process, all cores", 1), ("2 ranks (gloo), 1 core each", 2)):
        stamps: list[tuple[float, dict]] = []

        def on_event(e, stamps=stamps):
            if e["type"] == "metrics":
                stamps.append((time.perf_counter(), e["data"]))

        out = work / f"run-{world}"
        if world == 1:
            import torch

            torch.set_num_threads(cores)
            result = run_training(config, out, on_event, lambda: None)
            sync = 0.0
        else:
            result = run_data_parallel(
                config, out, on_event, lambda: None, world_size=world, threads=max(1, cores // world)
            )
            sync = result.metrics.get("gradient_sync_seconds", 0.0)
        (t0, d0), (t1, d1) = stamps[args.warmup - 1], stamps[-1]
        secs, steps = t1 - t0, d1["step"] - d0["step"]
        loss_tokens = sum(
            s[1]["trained_tokens"] - stamps[i - 1][1]["trained_tokens"]
            for i, s in enumerate(stamps)
            if i >= args.warmup
        )
        total_steps = stamps[-1][1]["step"]
        rows.append(
            (
                name,
                secs / steps,
                loss_tokens / secs,
                sync / (t1 - stamps[0][0] + 1e-9) if world > 1 else 0.0,
                d1["train_loss"],
                sync / total_steps,
            )
        )
        from safetensors import safe_open

        with safe_open(str(result.adapter_dir / "adapter_model.safetensors"), "pt") as f:
            payload = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118

    print(
        f"\nData-parallel training, SmolLM2-135M, batch {args.batch}, max length 256, {args.steps} measured steps "
        f"after {args.warmup} warm-up, {cores} cores\n"
    )
    print(
        "| variant | s/step | trained tok/s | x 1 process | gradient-sync share (rank 0) | "
        "all-reduce s/step | last train loss |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, sps, tps, share, loss, sync_step in rows:
        print(
            f"| {name} | {sps:.2f} | {tps:.0f} | {tps / rows[0][2]:.2f} | {share:.1%} | {sync_step:.3f} | {loss:.4f} |"
        )
    mb = payload * 4 / 2**20  # fp32 LoRA gradients, one flat all-reduce per step
    sync_step = rows[-1][5]
    print(
        f"\nAll-reduce payload: {payload:,} LoRA parameters = {mb:.1f} MiB of fp32 gradients per step; "
        f"gloo over loopback moved it in {sync_step * 1000:.0f} ms ({mb / max(sync_step, 1e-9):.0f} MiB/s)."
    )
    for label, gbs in (("8 GPUs, NVLink (~150 GB/s bus bandwidth)", 150), ("8 nodes, 10 Gb/s Ethernet", 1.25)):
        ring = 2 * 7 / 8 * payload * 4 / (gbs * 1e9)
        print(f"Predicted ring all-reduce on {label}: {ring * 1000:.2f} ms per step.")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# ---------------------------------------------------------------- job throughput


def jobs(args) -> None:
    import io

    from tests.api.test_job_faults import _client
    from tests.api.test_multi_server import _data, start_servers
    from tests.conftest import MODEL_CACHE, build_tiny_model, tiny_server_env
    from tests.pg import PostgresServer
    from tests.ray_cluster import RayCluster
    from tests.server import wait_for_job

    work = Path(tempfile.mkdtemp(prefix="tg-bench-jobs-"))
    tiny = build_tiny_model(work / "tiny", MODEL_CACHE / "smollm2-135m-instruct")
    rows = []
    with PostgresServer() as pg:
        for variant in args.variants.split(","):
            n_servers = 2 if variant == "local2" else 1
            extra = {}
            cluster = None
            if variant == "ray":
                cluster = RayCluster(cpus_per_node=1, env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")}).start()
                extra = {
                    "TUNEGATE_EXECUTOR": "ray",
                    "TUNEGATE_RAY_ADDRESS": cluster.address,
                    "TUNEGATE_WORKER_CONCURRENCY": "2",
                }
            env = tiny_server_env(
                tiny,
                TUNEGATE_DATABASE_URL=pg.create_database("bench"),
                TUNEGATE_TORCH_THREADS="1",
                # the closed-book regression check generates with both models after each job: it
                # measures the check, not the scheduling this benchmark is about
                TUNEGATE_REGRESSION_CHECK="off",
                **extra,
            )
            servers = start_servers(work / variant / "data", env, n_servers)
            try:
                client = _client(servers[0])
                t0 = time.time()
                ids = []
                for i in range(args.jobs):
                    c = servers[i % n_servers].client(client.api_key)
                    f = c.files.create(file=("t.jsonl", io.BytesIO(_data(16, i))), purpose="fine-tune")
                    ids.append(
                        c.fine_tuning.jobs.create(
                            model="tiny",
                            training_file=f.id,
                            seed=i,
                            method={
                                "type": "supervised",
                                "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2}},
                            },
                        ).id
                    )
                done = [wait_for_job(client, j, timeout=3600, poll=0.5) for j in ids]
                secs = time.time() - t0
                assert all(j.status == "succeeded" for j in done), [j.error for j in done if j.status != "succeeded"]
                rows.append((variant, n_servers, secs, args.jobs / secs * 3600))
                print(f"{variant}: {args.jobs} jobs in {secs:.0f} s", flush=True)
            finally:
                for srv in servers:
                    srv.stop()
                if cluster:
                    cluster.stop()
    names = {
        "local1": "1 server, local workers",
        "local2": "2 servers, local workers (one PostgreSQL)",
        "ray": "1 server, Ray executor (head + 1 node, 1 CPU each)",
    }
    print(
        f"\nJob throughput: {args.jobs} jobs (tiny random model on the SmolLM2 tokenizer, 16 examples + the "
        f"mixed-in refusal examples, 2 epochs, batch 2; screening on, regression check off), {os.cpu_count()} "
        "cores, PostgreSQL, 1 torch thread per worker, 1 job at a time per server or per Ray node\n"
    )
    print("| variant | wall s | jobs/hour | x 1 server |")
    print("|---|---:|---:|---:|")
    for variant, _, secs, per_hour in rows:
        print(f"| {names[variant]} | {secs:.0f} | {per_hour:.0f} | {per_hour / rows[0][3]:.2f} |")


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> None:
    import signal

    # A timeout's SIGTERM unwinds like Ctrl-C, so the servers, PostgreSQL and Ray nodes are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("dp")
    d.add_argument("--steps", type=int, default=6)
    d.add_argument("--warmup", type=int, default=2)
    d.add_argument("--batch", type=int, default=8)
    j = sub.add_parser("jobs")
    j.add_argument("--jobs", type=int, default=20)
    j.add_argument("--variants", default="local1,local2,ray")
    args = p.parse_args()
    {"dp": dp, "jobs": jobs}[args.what](args)


if __name__ == "__main__":
    main()
