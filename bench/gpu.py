"""GPU check: train in bf16 and with QLoRA, serve four adapters through vLLM and the transformers engine,
print one table. Driven by scripts/gpu-check.sh (which sets up the GPU environment first).

    python bench/gpu.py [--steps 60] [--clients 64] [--adapters 4] [--tokens 128] [--dry-run]

Training: the real recipe (`run_training`) on the packaged SmolLM2-135M-Instruct and the project's
sample data, `--steps` optimizer steps of batch 16; tokens/s from the job's own metrics events, MFU as
4 x parameters x tokens/s over the device's dense bf16 peak (LoRA: forward 2N, backward to the
activations 2N; the adapters' own weight gradients and attention are left out, so MFU is a slight
underestimate). Serving: `--clients` concurrent streaming clients spread over `--adapters` adapters
(the bf16 job's adapter and random ones of the same shape), greedy, exactly `--tokens` new tokens each
(EOS ignored), through the chat service in process; output tokens/s over the wall time, TTFT to the
first content token (p50, p90).

`--dry-run` runs every step on CPU at toy sizes (fp32 instead of bf16; QLoRA and vLLM reported as
skipped with the reason), to prove the plumbing where no GPU is lent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from serve import QUESTIONS, make_adapters, percentile  # noqa: E402  (bench/serve.py)

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; SXM parts where there are two.
BF16_PEAK = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def device_peak() -> tuple[str, float | None]:
    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((v for k, v in BF16_PEAK.items() if k in name), None)


def train(settings, base, data: Path, out: Path, steps: int, batch: int, **options) -> dict:
    from tunegate.train.config import TrainConfig
    from tunegate.train.recipe import run_training

    n = sum(1 for _ in open(data))
    config = TrainConfig(
        base_model=base.name,
        base_model_path=str(base.path),
        template_sha256=base.template_sha256,
        training_file=str(data),
        n_epochs=max(1, round(steps * batch / n)),
        batch_size=batch,
        learning_rate=2e-4,
        seed=0,
        **options,
    )
    events: list[dict] = []
    t0 = time.perf_counter()
    result = run_training(config, out, events.append, lambda: None)
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    last = metrics[-1]
    return {
        "tokens_per_second": last["tokens_per_second"],
        "peak_memory_mb": last["peak_memory_mb"],
        "loss": last["train_loss"],
        "steps": len(metrics),
        "seconds": time.perf_counter() - t0,
        "adapter": result.adapter_dir,
        "warnings": [e["message"] for e in events if e["level"] == "warn"],
    }


async def serve(engine, base, adapters: list[Path], clients: int, tokens: int) -> dict:
    from tunegate.serve.engine import ServableModel
    from tunegate.serve.protocol import ChatCompletionRequest
    from tunegate.serve.service import ChatService

    service = ChatService(engine)
    models = [ServableModel(f"ft-{i}", base, p) for i, p in enumerate(adapters)]

    def request(q):
        return ChatCompletionRequest.model_validate(
            {
                "model": "m",
                "messages": [{"role": "user", "content": q}],
                "temperature": 0,
                "max_tokens": tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": True,
            }
        )

    async def client(q, model, t0):
        ttft, usage = None, None
        async for c in await service.stream(request(q), model):
            if c.choices and c.choices[0].delta.content and ttft is None:
                ttft = time.perf_counter() - t0
            if c.usage:
                usage = c.usage
        return ttft, usage.completion_tokens

    await engine.start()
    try:
        for m in models:  # warm-up: the base and every adapter loaded, kernels compiled
            await client("Hello", m, time.perf_counter())
        questions = [QUESTIONS[i % len(QUESTIONS)] + f" ({i})" for i in range(clients)]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(client(q, models[i % len(models)], t0) for i, q in enumerate(questions)))
        wall = time.perf_counter() - t0
    finally:
        await engine.stop()
    ttfts = [r[0] for r in results if r[0] is not None]
    return {
        "output_tokens_per_second": sum(r[1] for r in results) / wall,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p90": percentile(ttfts, 0.9),
        "wall": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: check the plumbing only.")
    args = parser.parse_args()
    batch = 16
    if args.dry_run:
        args.steps, args.clients, args.tokens, batch = 2, 4, 4, 2
    elif not torch.cuda.is_available():
        print("No CUDA GPU here: run with --dry-run to check the plumbing on CPU.", file=sys.stderr)
        return 2

    from tunegate.catalog import get_base_model
    from tunegate.serve.hf_engine import HFEngine
    from tunegate.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="tunegate-gpu-check."))
    settings = Settings(data_dir=tmp / "data", max_batch_size=args.clients, max_queue=max(64, args.clients))
    settings.ensure_dirs()
    base = get_base_model("smollm2-135m-instruct", settings)
    params = _parameters(base.path)
    device, peak = device_peak()
    data = ROOT / "src" / "tunegate" / "samples" / "answer_format_train.jsonl"
    if args.dry_run:  # four examples: two steps of two
        (tmp / "small.jsonl").write_text("".join(data.read_text().splitlines(keepends=True)[:4]))
        data = tmp / "small.jsonl"
    rows: list[tuple[str, str, str]] = []
    skipped: list[str] = []

    def mfu(tps: float) -> str:
        return f"{100 * 4 * params * tps / peak:.1f}%" if peak else "n/a (unknown peak)"

    bf16 = train(settings, base, data, tmp / "bf16", args.steps, batch, dtype="auto")
    precision = "bf16" if torch.cuda.is_available() else "fp32 (CPU dry run)"
    rows.append(
        (
            f"train LoRA, {precision}",
            f"{bf16['tokens_per_second']:.0f} tok/s, MFU {mfu(bf16['tokens_per_second'])}",
            f"peak {bf16['peak_memory_mb']:.0f} MiB, loss {bf16['loss']:.3f}, {bf16['steps']} steps",
        )
    )
    try:
        from tunegate.train.lora import require_qlora

        require_qlora()
        q = train(settings, base, data, tmp / "qlora", args.steps, batch, quantization="nf4")
        rows.append(
            (
                "train QLoRA (nf4 base)",
                f"{q['tokens_per_second']:.0f} tok/s, MFU {mfu(q['tokens_per_second'])}",
                f"peak {q['peak_memory_mb']:.0f} MiB, loss {q['loss']:.3f}, {q['steps']} steps",
            )
        )
    except Exception as exc:  # a 400 on CPU or without bitsandbytes: reported, not hidden
        skipped.append(f"QLoRA: {getattr(exc, 'message', exc)}")

    adapters = [bf16["adapter"], *make_adapters(base, tmp / "adapters", args.adapters - 1)]
    engines = [("transformers", lambda: HFEngine(settings))]
    try:
        import vllm  # noqa: F401

        from tunegate.serve.vllm_engine import VLLMEngine, VLLMSettings

        if torch.cuda.is_available():
            engines.append(("vllm", lambda: VLLMEngine(settings, VLLMSettings(max_loras=args.adapters))))
        else:
            skipped.append("vLLM: installed, but it generates only on a GPU")
    except ImportError:
        skipped.append("vLLM: not installed (pip install 'tunegate[vllm]' on a CUDA machine)")
    serving = {}
    for name, make in engines:
        s = asyncio.run(serve(make(), base, adapters, args.clients, args.tokens))
        serving[name] = s
        rows.append(
            (
                f"serve {name}: {args.clients} clients / {len(adapters)} adapters",
                f"{s['output_tokens_per_second']:.0f} output tok/s",
                f"TTFT p50 {1000 * s['ttft_p50']:.0f} ms, p90 {1000 * s['ttft_p90']:.0f} ms",
            )
        )
    if "vllm" in serving:
        ratio = serving["vllm"]["output_tokens_per_second"] / serving["transformers"]["output_tokens_per_second"]
        rows.append(("vLLM vs transformers engine", f"{ratio:.1f}x output tok/s", ""))

    print(
        f"\ntunegate GPU check — {time.strftime('%Y-%m-%d')} — {device} — SmolLM2-135M-Instruct "
        f"({params / 1e6:.0f}M params), torch {torch.__version__}"
    )
    width = max(len(r[0]) for r in rows)
    for what, figure, detail in rows:
        print(f"| {what:<{width}} | {figure:<36} | {detail}")
    for s in skipped:
        print(f"skipped: {s}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows, "skipped": skipped}, indent=2))
    return 0


def _parameters(path: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118 - not a dict


if __name__ == "__main__":
    sys.exit(main())
