"""Data-parallel training with torch.distributed: the process group, what the recipe asks of it, and
the local launchers.

Owns `Group` (rank, world size, and the four collective steps the recipe needs: shard a batch,
sum the LoRA gradients, sum the step statistics, agree on stop/pause) and three ways to start N
ranks: `run_data_parallel` on one machine (rank 0 in the calling process, so it keeps the job's
event callback and stop poll; ranks 1..N-1 spawned), `python -m tunegate.train.distributed` under
`torchrun`, and `run_ray_train` on a Ray cluster (Ray Train's `TorchTrainer`: each rank a Ray Train
worker with its declared resources, on whichever nodes have them; the Ray executor uses it).

Why exact: every rank holds the whole batch list (the dataset is small next to the model), trains
its slice, and divides its summed loss by the loss tokens of the WHOLE batch; summing the
gradients over ranks (one flat all-reduce) then gives exactly the one-process gradient of that
batch, so N ranks x batch/N equals 1 rank x batch up to float summation order. The LoRA weights and
optimizer state are the same on every rank, so checkpoints are written once (rank 0) and resume at
any world size. Backend: gloo on CPU, nccl on CUDA. Dropout masks depend on the rank's slice, so
bit-for-bit agreement with one process needs `lora_dropout=0`; with dropout the runs agree in
distribution only. Models whose weights do not fit one device need sharding (FSDP or ZeRO), not
this: see the README's deployment guide.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_CONTROL = ("", "cancel", "pause")


class Group:
    """One process, no communication: what the recipe uses when it runs alone."""

    rank = 0
    world_size = 1
    is_main = True

    def shard(self, batch: list) -> list:
        return batch

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        pass

    def sum_stats(self, stats):
        return stats

    def agree(self, control: str | None) -> str | None:
        return control

    def barrier(self) -> None:
        pass

    def sync_parameters(self, params: list[torch.nn.Parameter]) -> None:
        pass


@dataclass
class DistributedGroup(Group):
    """A rank of an initialised torch.distributed process group."""

    rank: int = 0
    world_size: int = 1
    sync_seconds: float = field(default=0.0)  # time spent in gradient all-reduce (bench/scale.py reads it)

    @property
    def is_main(self) -> bool:  # type: ignore[override]
        return self.rank == 0

    def shard(self, batch: list) -> list:
        return batch[self.rank :: self.world_size]

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        import torch.distributed as dist

        t0 = time.perf_counter()
        # One flat buffer, one all-reduce: LoRA gradients are small and many, so per-tensor calls
        # would be latency-bound. A rank whose slice was empty contributes zeros.
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n
        self.sync_seconds += time.perf_counter() - t0

    def sum_stats(self, stats):
        import torch.distributed as dist

        from tunegate.train.lora import StepStats

        t = torch.tensor([stats.loss_sum, stats.correct, stats.n_loss, stats.n_tokens], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return StepStats(float(t[0]), int(t[1]), int(t[2]), int(t[3]))

    def agree(self, control: str | None) -> str | None:
        """Rank 0's stop/pause decision, on every rank (only rank 0 polls the job)."""
        import torch.distributed as dist

        t = torch.tensor([_CONTROL.index(control or "") if self.is_main else 0])
        dist.broadcast(t, src=0)
        return _CONTROL[int(t)] or None

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def sync_parameters(self, params: list[torch.nn.Parameter]) -> None:
        """Start from rank 0's weights (as DDP does), whatever each rank initialised or restored."""
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, src=0)


def init_group(rank: int, world_size: int, master_addr: str, master_port: int, device: str = "cpu") -> DistributedGroup:
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}", rank=rank, world_size=world_size)
    return DistributedGroup(rank=rank, world_size=world_size)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exit_with_parent() -> None:
    """A rank whose launcher died (a killed job worker) would wait in a collective until gloo's
    timeout; it stops at once instead, and the job resumes from its checkpoint."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _rank_main(index: int, config_dict: dict, out_dir: str, world_size: int, port: int, threads: int | None) -> None:
    """Ranks 1..N-1 of `run_data_parallel` (spawned: `index` 0 is rank 1)."""
    from tunegate.train.config import TrainConfig
    from tunegate.train.recipe import run_training

    if threads:
        torch.set_num_threads(threads)
    _exit_with_parent()
    group = init_group(index + 1, world_size, "127.0.0.1", port)
    try:
        run_training(TrainConfig.from_dict(config_dict), Path(out_dir), lambda e: None, lambda: None, group=group)
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()


def run_data_parallel(config, out_dir: Path, on_event, should_stop, world_size: int, threads: int | None = None):
    """Train with `world_size` ranks on this machine; returns rank 0's TrainResult.

    Rank 0 runs here (events and stop polls stay in this process: the job worker's callbacks);
    the others are fresh processes (spawn, so no forked torch state). If a rank dies, the others'
    collectives fail and this raises: the job's worker then exits and is re-queued like any crash.
    """
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from tunegate.train.recipe import run_training

    if world_size <= 1:
        return run_training(config, out_dir, on_event, should_stop)
    if config.method != "supervised":
        from tunegate.errors import InvalidRequestError

        raise InvalidRequestError(
            "Data-parallel training (`tunegate.n_workers` > 1) is available for supervised jobs "
            "only; use one worker for DPO and reinforcement jobs.",
            param="tunegate.n_workers",
        )
    on_event(
        {
            "level": "info",
            "type": "message",
            "data": {"world_size": world_size},
            "message": f"Training data-parallel on {world_size} ranks (torch.distributed, "
            f"{'nccl' if config.device == 'cuda' else 'gloo'}), {threads or 'default'} threads each.",
        }
    )
    port = free_port()
    ctx = mp.start_processes(
        _rank_main,
        args=(config.to_dict(), str(out_dir), world_size, port, threads),
        nprocs=world_size - 1,
        join=False,
        start_method="spawn",
    )
    group = init_group(0, world_size, "127.0.0.1", port)
    try:
        result = run_training(config, out_dir, on_event, should_stop, group=group)
        result.metrics["gradient_sync_seconds"] = group.sync_seconds
        return result
    finally:
        dist.destroy_process_group()
        if not ctx.join(timeout=120):
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()


class RanksLost(RuntimeError):
    """A Ray Train rank (or its node) died before rank 0 recorded an outcome: the run can resume
    from its last checkpoint, unlike a training error, which would only happen again."""


_RAY_RESULT = "ray-train-result.json"


def _lost_peer(exc: BaseException) -> bool:
    """A collective failed because another rank went away (gloo/nccl report it as a DistError or a
    RuntimeError naming the transport)."""
    import torch.distributed as dist

    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or any(w in text for w in ("gloo", "nccl", "connection", "peer"))


def _ray_train_loop(cfg: dict) -> None:
    """One rank under TorchTrainer (the process group is set up by Ray Train). Rank 0 builds its
    event callback and stop poll here, in its own Ray worker, from `cfg["callbacks"]` (a picklable
    factory), and leaves the outcome in the shared output folder for the launcher to read."""
    import ray.train

    from tunegate.train.config import TrainConfig
    from tunegate.train.recipe import run_training

    ctx = ray.train.get_context()
    group = DistributedGroup(rank=ctx.get_world_rank(), world_size=ctx.get_world_size())
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    config, out_dir = TrainConfig.from_dict(cfg["config"]), Path(cfg["out_dir"])
    if not group.is_main:
        run_training(config, out_dir, lambda e: None, lambda: None, group=group)
        return
    on_event, should_stop = cfg["callbacks"]()
    result_path = out_dir / _RAY_RESULT
    try:
        r = run_training(config, out_dir, on_event, should_stop, group=group)
    except Exception as exc:
        if not _lost_peer(exc):  # a training error is the job's outcome; a lost peer is a crash to resume
            result_path.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        raise
    outcome = {
        "status": r.status,
        "adapter_dir": str(r.adapter_dir) if r.adapter_dir else None,
        "checkpoints": [[step, str(path), metrics] for step, path, metrics in r.checkpoints],
        "trained_tokens": r.trained_tokens,
        "metrics": {**r.metrics, "gradient_sync_seconds": group.sync_seconds},
    }
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(outcome))
    os.replace(tmp, result_path)


def run_ray_train(
    config,
    out_dir: Path,
    callbacks,
    world_size: int,
    *,
    threads: int | None = None,
    resources_per_worker: dict[str, float] | None = None,
    env: dict[str, str] | None = None,
):
    """Train with `world_size` ranks as Ray Train workers on the connected Ray cluster (ray.init
    done by the caller); returns rank 0's TrainResult.

    `callbacks()` runs on rank 0 and returns `(on_event, should_stop)`; it must pickle (a module
    function or a partial of one), since rank 0 runs in a Ray worker of its own. `out_dir` must be on
    storage every node sees (the data directory). Ray Train retries nothing (`max_failures=0`): a lost
    rank raises `RanksLost` and the caller resumes the run from its last checkpoint.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tunegate.train.recipe import TrainResult

    if config.method != "supervised":
        from tunegate.errors import InvalidRequestError

        raise InvalidRequestError(
            "Data-parallel training (`tunegate.n_workers` > 1) is available for supervised jobs "
            "only; use one worker for DPO and reinforcement jobs.",
            param="tunegate.n_workers",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / _RAY_RESULT
    result_path.unlink(missing_ok=True)
    gpu = config.device == "cuda"
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config={
            "config": config.to_dict(),
            "out_dir": str(out_dir),
            "threads": threads,
            "callbacks": callbacks,
        },
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=world_size, use_gpu=gpu, resources_per_worker=resources_per_worker),
        run_config=RunConfig(
            name="ray-train",
            storage_path=str(out_dir.resolve()),
            failure_config=FailureConfig(max_failures=0),
            worker_runtime_env={"env_vars": env} if env else None,  # type: ignore[call-arg]  # Ray Train v2's RunConfig
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:
        outcome = json.loads(result_path.read_text()) if result_path.exists() else {}
        if outcome.get("error"):
            raise RuntimeError(outcome["error"]) from None
        raise RanksLost(f"a Ray Train rank stopped: {type(exc).__name__}: {exc}") from exc
    outcome = json.loads(result_path.read_text())
    return TrainResult(
        status=outcome["status"],
        adapter_dir=Path(outcome["adapter_dir"]) if outcome["adapter_dir"] else None,
        checkpoints=[(step, Path(path), metrics) for step, path, metrics in outcome["checkpoints"]],
        trained_tokens=outcome["trained_tokens"],
        metrics=outcome["metrics"],
    )


def main(argv: list[str] | None = None) -> int:
    """`torchrun --nproc-per-node N -m tunegate.train.distributed CONFIG.json OUT_DIR`: train one
    config with N ranks; rank 0 prints the recipe's events as JSON lines."""
    import torch.distributed as dist

    from tunegate.train.config import TrainConfig
    from tunegate.train.recipe import run_training

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: torchrun --nproc-per-node N -m tunegate.train.distributed CONFIG.json OUT_DIR", file=sys.stderr)
        return 2
    config = TrainConfig.from_dict(json.loads(Path(args[0]).read_text()))
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:
        dist.init_process_group("nccl" if config.device == "cuda" else "gloo")
        group: Group = DistributedGroup(rank=rank, world_size=world_size)
    else:
        group = Group()

    def emit(event: dict[str, Any]) -> None:
        print(json.dumps(event), flush=True)

    try:
        result = run_training(config, Path(args[1]), emit, lambda: None, group=group)
    finally:
        if world_size > 1:
            dist.destroy_process_group()
    if group.is_main:
        emit(
            {
                "type": "result",
                "status": result.status,
                "adapter_dir": str(result.adapter_dir),
                "trained_tokens": result.trained_tokens,
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
