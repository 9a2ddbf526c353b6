"""The job page charts what each method reports: a DPO job shows loss, the implicit rewards of the
preferred and non-preferred answers, their margin and preference accuracy; a reinforcement job shows
its mean reward (training groups, held-out prompts, the base model's held-out reward) and the KL to
the base. Both jobs train on the tiny model through the official SDK; the page reads their events."""

from __future__ import annotations

import contextlib
import io
import json
import time

import openai
import pytest

from tests.conftest import tiny_server_env
from tests.server import RunningServer

pytestmark = pytest.mark.browser

GRADER = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
}


@pytest.fixture(scope="module")
def server(browser, tmp_path_factory, tiny_model_path):
    """This module's own server: two jobs train at once, and without the regression check, so each job's
    metrics arrive without waiting for the other's after-training checks (they are not charted here)."""
    data_dir = tmp_path_factory.mktemp("charts") / "data"
    env = tiny_server_env(
        tiny_model_path,
        TUNEGATE_TORCH_THREADS="1",
        TUNEGATE_WORKER_CONCURRENCY="2",
        TUNEGATE_REGRESSION_CHECK="off",
    )
    with RunningServer(data_dir, env) as srv:
        srv.key = srv.create_key("org-charts")
        yield srv


def _file(client, rows: list[dict], name: str):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


def _pairs(n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"What colour is box {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"Box {i} is red."}],
            "non_preferred_output": [{"role": "assistant", "content": f"No idea about box {i}"}],
        }
        for i in range(offset, offset + n)
    ]


def _prompts(n: int, offset: int = 0) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"What is {i} plus 1?"}], "answer": str(i + 1)}
        for i in range(offset, offset + n)
    ]


def _wait_for_metrics(client, job_id: str, n: int, timeout: float = 600) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        metrics = [e.data for e in events if e.type == "metrics"]
        if len(metrics) >= n and any(k.startswith("full_valid_") for m in metrics for k in m):
            return metrics
        job = client.fine_tuning.jobs.retrieve(job_id)
        assert job.status not in ("failed", "cancelled"), (job.status, job.error)
        time.sleep(2)
    last = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=10).data]
    raise AssertionError(f"job {job_id} reported no {n} metrics events in {timeout:.0f} s; last events: {last}")


def test_dpo_and_reinforcement_jobs_chart_their_own_metrics(ui, server):
    client = server.client(server.key)
    dpo = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=_file(client, _pairs(10), "pairs.jsonl").id,
        validation_file=_file(client, _pairs(10, 50), "pairs-valid.jsonl").id,
        suffix="dpo-chart",
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}},
    )
    rft = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=_file(client, _prompts(4), "prompts.jsonl").id,
        validation_file=_file(client, _prompts(2, 50), "prompts-valid.jsonl").id,
        suffix="rft-chart",
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": GRADER,
                "hyperparameters": {"n_epochs": 1, "batch_size": 2, "compute_multiplier": 0.5},
            },
        },
    )
    dpo_steps = len(_wait_for_metrics(client, dpo.id, 2))
    rft_steps = len(_wait_for_metrics(client, rft.id, 2))

    ui.sign_in(server.key)
    page = ui.page
    page.goto(f"{server.url}/#/jobs/{dpo.id}")
    tabs = page.get_by_role("tablist", name="Metric").get_by_role("tab")
    tabs.first.wait_for()
    assert tabs.all_inner_texts() == ["Loss", "Rewards", "Margin", "Preference accuracy"]
    loss = page.locator("svg#loss-chart")
    loss.locator(".series-train .pt").first.wait_for(timeout=60_000)
    assert int(loss.get_attribute("data-train-loss-points")) == dpo_steps
    page.get_by_role("tab", name="Rewards").click()
    rewards = page.locator("svg#rewards-chart")
    assert rewards.is_visible() and not loss.is_visible()
    assert int(rewards.get_attribute("data-train-rewards-chosen-points")) == dpo_steps
    assert int(rewards.get_attribute("data-train-rewards-rejected-points")) == dpo_steps
    assert page.locator(".legend", has_text="Non-preferred answer").is_visible()
    page.get_by_role("tab", name="Margin").click()
    margin = page.locator("svg#margin-chart")
    assert int(margin.get_attribute("data-full-valid-rewards-margin-points")) >= 1
    page.get_by_role("tab", name="Preference accuracy").click()
    assert int(page.locator("svg#preference-accuracy-chart").get_attribute("data-valid-rewards-accuracy-points")) >= 1
    ui.shot("20-dpo-job-charts")
    ui.check_accessibility()

    page.goto(f"{server.url}/#/jobs/{rft.id}")
    tabs = page.get_by_role("tablist", name="Metric").get_by_role("tab")
    # Same page, new hash: wait for this job's own first tab, or the DPO job's tabs still on screen
    # satisfy the wait and are gone by the time they are read.
    page.get_by_role("tab", name="Reward", exact=True).wait_for()
    assert tabs.all_inner_texts() == ["Reward", "KL"]
    reward = page.locator("svg#reward-chart")
    reward.locator(".series-train .pt").first.wait_for(timeout=60_000)
    assert int(reward.get_attribute("data-train-reward-mean-points")) == rft_steps
    assert int(reward.get_attribute("data-base-valid-reward-mean-points")) >= 1
    assert int(reward.get_attribute("data-valid-reward-mean-points")) >= 1
    page.get_by_role("tab", name="KL").click()
    kl = page.locator("svg#kl-chart")
    assert kl.is_visible() and int(kl.get_attribute("data-train-kl-points")) == rft_steps
    ui.shot("21-reinforcement-job-charts")
    ui.check_accessibility()
    for job in (dpo, rft):  # the after-training checks are not what this test is about
        with contextlib.suppress(openai.ConflictError):  # already finished
            client.fine_tuning.jobs.cancel(job.id)
