"""The product, end to end on the real SmolLM2-135M-Instruct with the official openai SDK: upload,
create a job, poll to `succeeded`, metrics in events and checkpoints, training and held-out loss
fall, and the fine-tuned model shows the taught behaviour far more often than the base model."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tunegate import samples

pytestmark = pytest.mark.e2e


def test_job_succeeds_with_metrics_and_checkpoints(real_server, demo_job):
    client = real_server.client(real_server.key_a)
    assert demo_job.status == "succeeded", demo_job.error
    assert demo_job.fine_tuned_model.startswith("ft:smollm2-135m-instruct:e2e-a:fmt:")
    assert demo_job.trained_tokens > 0 and demo_job.result_files
    hp = demo_job.hyperparameters
    assert hp.n_epochs == samples.DEMO_HYPERPARAMETERS["n_epochs"] and hp.batch_size == 8

    events = list(client.fine_tuning.jobs.list_events(demo_job.id, limit=100))
    metrics = sorted((e.data for e in events if e.type == "metrics"), key=lambda d: d["step"])
    assert metrics and {"train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"} <= set(
        metrics[0]
    )
    assert any("full_valid_loss" in m for m in metrics)
    first = sum(m["train_loss"] for m in metrics[:3]) / 3
    last = sum(m["train_loss"] for m in metrics[-3:]) / 3
    assert last < 0.7 * first, (first, last)  # loss falls
    # Held-out loss too, most of it in the first epoch (measured: 3.8 -> ~1.0).
    full_valid = [m["full_valid_loss"] for m in metrics if "full_valid_loss" in m]
    assert len(full_valid) == hp.n_epochs and full_valid[-1] <= full_valid[0]
    assert full_valid[-1] < 0.5 * metrics[0]["valid_loss"], (metrics[0]["valid_loss"], full_valid)

    ckpts = client.fine_tuning.jobs.checkpoints.list(demo_job.id).data
    assert len(ckpts) == samples.DEMO_HYPERPARAMETERS["n_epochs"]
    assert all(c.fine_tuned_model_checkpoint.startswith(demo_job.fine_tuned_model + ":ckpt-step-") for c in ckpts)
    assert all(c.metrics.train_loss is not None and c.metrics.full_valid_loss is not None for c in ckpts)

    csv = client.files.content(demo_job.result_files[0]).text.splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(csv) == 1 + len(metrics)


def test_fine_tuned_model_learned_the_format(real_server, demo_job):
    client = real_server.client(real_server.key_a)
    prompts = samples.held_out_prompts()

    def follows(model: str, messages: list[dict]) -> bool:
        r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=48)
        return samples.follows_format(r.choices[0].message.content)

    rates = {}
    # Concurrent requests, as clients send them: the engine batches them.
    with ThreadPoolExecutor(8) as pool:
        for model in ("smollm2-135m-instruct", demo_job.fine_tuned_model):
            rates[model] = sum(pool.map(lambda m: follows(model, m), prompts)) / len(prompts)
    base, tuned = rates.values()
    print(f"format rate: base {base:.2f}, fine-tuned {tuned:.2f}")
    assert tuned >= 0.75 and tuned - base >= 0.6, rates
