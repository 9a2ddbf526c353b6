"""The dashboard in headless Chromium against a real server: sign in, upload and read the
validation report, train a job on the tiny model while the loss chart draws, chat with streaming
(alone and side by side), and API errors shown as readable messages.

Screenshots land in tests/screenshots/ (or $TUNEGATE_SCREENSHOTS) for a person to look at.
"""

from __future__ import annotations

import io
import json
import re

import pytest

from tests.server import wait_for_job

pytestmark = pytest.mark.browser

JOB_TIMEOUT_MS = 150_000


def jsonl(rows) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


GOOD = jsonl(
    {
        "messages": [
            {"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
        ]
    }
    for i in range(12)
)
VALID = jsonl(
    {
        "messages": [
            {"role": "user", "content": f"What is {i} plus 1?"},
            {"role": "assistant", "content": f"{i} plus 1 is {i + 1}."},
        ]
    }
    for i in range(20, 30)
)
# Line 2 is not JSON, line 3 has no assistant message, line 4 uses an unknown role.
BAD = (
    b"\n".join(
        [
            json.dumps(
                {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
            ).encode(),
            b'{"messages": [ this is not json',
            json.dumps({"messages": [{"role": "user", "content": "only a question"}]}).encode(),
            json.dumps(
                {"messages": [{"role": "wizard", "content": "abracadabra"}, {"role": "assistant", "content": "ok"}]}
            ).encode(),
        ]
    )
    + b"\n"
)


def upload(ui, name: str, data: bytes, purpose: str = "fine-tune") -> None:
    page = ui.page
    page.goto(ui.server.url + "/#/files")
    page.get_by_label("Purpose").select_option(purpose)
    page.get_by_label("JSONL file").set_input_files({"name": name, "mimeType": "application/jsonl", "buffer": data})
    page.get_by_role("button", name="Upload").click()


def test_sign_in_shows_why_a_key_is_refused_and_keeps_the_key_for_the_tab(ui, server):
    page = ui.page
    page.goto(server.url + "/")
    page.get_by_label("API key").fill("tg-not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "API key" in alert.inner_text() and "401" in alert.inner_text()
    assert page.get_by_label("API key").get_attribute("aria-invalid") == "true"
    assert not page.get_by_role("navigation", name="Main").is_visible()
    ui.shot("01-sign-in-refused")
    ui.check_accessibility()

    ui.sign_in(server.key)
    assert page.evaluate("sessionStorage.getItem('tunegate.apiKey')") == server.key
    page.reload()
    page.get_by_role("heading", name="Your files").wait_for()  # still signed in after a reload
    assert page.locator("nav a[aria-current=page]").inner_text() == "Files"

    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API key").wait_for()
    assert page.evaluate("sessionStorage.getItem('tunegate.apiKey')") is None


def test_upload_shows_progress_then_the_validation_report(ui, server):
    ui.sign_in(server.key)
    page = ui.page
    upload(ui, "numbers.jsonl", GOOD)
    page.wait_for_url(re.compile(r"#/files/file-"))
    verdict = page.locator("#validation-verdict")
    verdict.wait_for()
    assert "Valid" in verdict.inner_text() and "12 examples" in verdict.inner_text()
    # The token statistics come from the server's report, rendered with the model's chat template.
    tokens = page.get_by_role("heading", name="Tokens")
    tokens.wait_for()
    stats = page.locator("table.token-stats")
    assert stats.count() == 1 and stats.locator("tbody tr").count() >= 1
    assert page.locator("svg.histogram rect.bar").count() >= 1
    assert page.get_by_role("link", name="Fine-tune with this file").is_visible()
    ui.shot("02-file-validation-report")
    ui.check_accessibility()

    # An evals file is stored as is; the form reports the finished upload and the list shows it.
    upload(ui, "evals.jsonl", GOOD, purpose="evals")
    page.locator("#upload-progress-text", has_text="Uploaded evals.jsonl as file-").wait_for()
    assert page.locator("#upload-progress").get_attribute("value") == "100"
    row = page.locator("tr", has_text="evals.jsonl")
    row.wait_for()
    assert "evals" in row.inner_text()
    ui.shot("03-files-list")
    ui.check_accessibility()


def test_bad_file_and_api_errors_are_shown_as_readable_messages(ui, server):
    ui.sign_in(server.key)
    page = ui.page
    upload(ui, "broken.jsonl", BAD)
    page.wait_for_url(re.compile(r"#/files/file-"))
    verdict = page.locator("#validation-verdict")
    verdict.wait_for()
    assert verdict.get_attribute("role") == "alert" and "problem" in verdict.inner_text()
    rows = page.locator("table.problems-errors tbody tr")
    by_line = {}
    for i in range(rows.count()):
        r = rows.nth(i)
        by_line.setdefault(r.get_attribute("data-line"), []).append(
            (r.get_attribute("data-code"), r.locator(".problem-message").inner_text())
        )
    assert {"2", "3", "4"} <= set(by_line), by_line
    assert all(message.strip() for problems in by_line.values() for _, message in problems)
    assert "example_missing_assistant_message" in [c for c, _ in by_line["3"]]
    assert "unrecognized_role" in [c for c, _ in by_line["4"]]
    # The offending line itself is shown under its problem, so the fix is easy to find.
    assert "this is not json" in page.locator("tr[data-line='2'] pre.line-text").first.inner_text()
    ui.shot("04-file-with-problems")
    ui.check_accessibility()

    # A file over the server's upload limit: the upload form says so instead of failing silently.
    upload(ui, "huge.jsonl", GOOD * 200, purpose="evals")
    alert = page.locator("#upload-status [role=alert]")
    alert.wait_for()
    assert re.search(r"limit|too large", alert.inner_text(), re.I), alert.inner_text()
    ui.shot("05-upload-too-large")

    # A job with an out-of-range hyperparameter: the API's 400 is shown at the top and at the field.
    good = server.client(server.key).files.create(file=("ok.jsonl", io.BytesIO(GOOD)), purpose="fine-tune")
    page.goto(f"{server.url}/#/jobs/new?training_file={good.id}")
    page.get_by_label("Base model").select_option("tiny")
    page.get_by_label("Epochs").fill("99")
    page.get_by_role("button", name="Create job").click()
    field_error = page.locator("#job-n_epochs-error")
    field_error.wait_for()
    assert "n_epochs" in field_error.inner_text()
    assert page.get_by_label("Epochs").get_attribute("aria-invalid") == "true"
    assert "HTTP 400" in page.locator("#job-create-status [role=alert]").inner_text()
    ui.shot("06-job-form-error")
    ui.check_accessibility()

    # An unknown job: the page shows the API's 404 message, not a blank screen.
    page.goto(f"{server.url}/#/jobs/ftjob-doesnotexist")
    alert = page.get_by_role("alert").filter(has_text="No such fine-tuning job")
    alert.wait_for()
    assert "HTTP 404" in alert.inner_text() and page.get_by_role("heading", name="Job").is_visible()


def test_job_trains_on_the_tiny_model_with_a_live_loss_chart_and_succeeds(ui, server):
    client = server.client(server.key)
    train = client.files.create(file=("train.jsonl", io.BytesIO(GOOD)), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", io.BytesIO(VALID)), purpose="fine-tune")
    ui.sign_in(server.key)
    page = ui.page
    page.goto(f"{server.url}/#/jobs/new?training_file={train.id}")
    page.get_by_label("Base model").select_option("tiny")
    page.get_by_label("Validation file").select_option(valid.id)
    page.get_by_label("Suffix").fill("dash")
    page.get_by_label("Seed").fill("3")
    page.get_by_label("Epochs").fill("2")
    page.get_by_label("Batch size").fill("4")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.split("#/jobs/")[1]
    # The page is never reloaded from here on: everything below arrives by polling.
    page.evaluate("window.__sameDocument = true")
    chart = page.locator("svg#loss-chart")
    first_count = int(chart.get_attribute("data-train-loss-points") or 0)

    # (Locators, not wait_for_function: the page's CSP forbids the eval that the latter needs.)
    chart.locator(".series-train .pt").first.wait_for(timeout=JOB_TIMEOUT_MS)
    ui.shot("07-job-running")
    page.locator("#job-status [data-status=succeeded]").wait_for(timeout=JOB_TIMEOUT_MS)
    page.locator("#job-checkpoints tbody tr").first.wait_for()
    assert page.evaluate("window.__sameDocument") is True

    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    steps = {e.data["step"] for e in events if e.type == "metrics"}
    final_count = int(chart.get_attribute("data-train-loss-points"))
    assert first_count == 0 and final_count == len(steps) >= 2
    line = chart.locator(".series-train polyline")
    assert len(line.get_attribute("points").split()) == final_count
    assert int(chart.get_attribute("data-full-valid-loss-points")) >= 1
    assert chart.locator(".series-full .diamond").count() >= 1
    assert "Full validation loss" in page.locator(".legend").first.inner_text()

    job = client.fine_tuning.jobs.retrieve(job_id)
    assert page.locator("#fine-tuned-model").inner_text() == job.fine_tuned_model
    assert page.locator("#job-events li").count() >= len(steps)
    with page.expect_download() as dl:
        page.locator("[data-result-file]").first.click()
    csv = open(dl.value.path()).read()
    assert csv.splitlines()[0].startswith("step") and len(csv.splitlines()) == len(steps) + 1
    # The real safety report: screening of the training data and the gate's base vs fine-tuned rates.
    decision = page.locator("#safety-gate-decision")
    decision.wait_for()
    assert "Passed" in decision.inner_text()
    assert page.locator("#safety-screening").get_by_text("Examples screened").is_visible()
    overall = page.locator("table.gate-overall tbody tr")
    assert overall.count() == 3 and "95% CI" in overall.first.inner_text()
    assert page.locator("#safety-samples article.sample").count() >= 1
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download the HTML report").click()
    assert "<html" in open(dl.value.path(), encoding="utf-8").read(2000).lower()
    page.get_by_role("tab", name="Token accuracy").click()
    assert page.locator("svg#accuracy-chart").is_visible() and not chart.is_visible()
    page.get_by_role("tab", name="Loss").click()
    ui.shot("08-job-succeeded")
    ui.check_accessibility()


@pytest.fixture(scope="module")
def fine_tuned_model(server):
    """A fine-tuned model on `tiny`: the one the job test trained through the page, or a new one."""
    client = server.client(server.key)
    done = [j for j in client.fine_tuning.jobs.list(limit=50).data if j.status == "succeeded"]
    if done:
        return done[0].fine_tuned_model
    f = client.files.create(file=("t.jsonl", io.BytesIO(GOOD)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=f.id,
        seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    job = wait_for_job(client, job.id, JOB_TIMEOUT_MS / 1000)
    assert job.status == "succeeded", job.error
    return job.fine_tuned_model


def test_playground_streams_answers_from_base_and_fine_tuned_side_by_side(ui, server, fine_tuned_model):
    ui.sign_in(server.key)
    page = ui.page
    page.goto(f"{server.url}/#/models")
    row = page.locator(f"tr[data-model-id='{fine_tuned_model}']")
    row.wait_for()
    assert "fine-tuned" in row.inner_text()
    row.get_by_role("link", name="Chat").click()
    page.wait_for_url(re.compile(r"#/playground"))
    assert page.get_by_label("Model", exact=True).input_value() == fine_tuned_model

    page.get_by_label("Side by side: send each message to two models").check()
    page.get_by_label("Compare with").select_option("tiny")
    page.get_by_label("Max tokens").fill("40")
    page.get_by_label("Message", exact=True).fill("What is 3 plus 3?")
    page.get_by_label("Message", exact=True).press("Enter")
    for log in ("#pg-log-0", "#pg-log-1"):
        page.locator(f"{log} .message-assistant[data-streaming=false]").wait_for(timeout=60_000)
    for log, model in (("#pg-log-0", fine_tuned_model), ("#pg-log-1", "tiny")):
        msg = page.locator(f"{log} .message-assistant")
        assert msg.locator(".message-role").inner_text() == model
        assert msg.locator("[role=alert]").count() == 0, msg.inner_text()
        # Text arrived as several deltas, each drawn as it came.
        assert int(msg.get_attribute("data-chunks")) >= 2
        assert msg.locator(".message-text").inner_text().strip()
        assert msg.get_attribute("data-finish-reason") in ("stop", "length")
        assert page.locator(f"{log} .message-user").inner_text().endswith("What is 3 plus 3?")
    ui.shot("09-playground-side-by-side")
    ui.check_accessibility()

    # A second turn goes to the single model and carries the conversation.
    page.get_by_label("Side by side: send each message to two models").uncheck()
    page.get_by_label("Message", exact=True).fill("And 4 plus 4?")
    page.get_by_role("button", name="Send").click()
    page.locator("#pg-log-0 .message-assistant[data-streaming=false]").nth(1).wait_for(timeout=60_000)
    assert page.locator("#pg-log-1 .message-assistant").count() == 1


def test_chart_ticks_enclose_the_data_and_reports_are_read_as_the_server_writes_them(ui, server):
    """The page's own helpers, run in the browser: axis ticks always enclose the data (a chart
    once drew its lines above its top tick), the validator's inclusive histogram bins, and error
    bodies that are not OpenAI JSON still become sentences."""
    page = ui.page
    page.goto(server.url + "/")
    ranges = [(10.68, 10.79), (0.0012, 0.0013), (0, 1), (2.5, 2.5), (-3.2, 7.9), (123, 98765)]
    ticks = page.evaluate(
        "rs => import('/dashboard/static/js/chart.js').then(m => rs.map(([a, b]) => m.niceTicks(a, b)))", ranges
    )
    for (lo, hi), t in zip(ranges, ticks):
        assert t[0] <= lo and t[-1] >= hi and len(t) >= 2 and t == sorted(t), (lo, hi, t)

    bins = page.evaluate(
        "b => import('/dashboard/static/js/pages/file.js').then(m => m.findBins({histogram: b}))",
        [
            {"start": 38, "end": 39, "count": 5},
            {"start": 40, "end": 41, "count": 0},
            {"start": 42, "end": 43, "count": 2},
        ],
    )
    assert [(b["lo"], b["hi"], b["count"]) for b in bins] == [(38, 40, 5), (40, 42, 0), (42, 44, 2)]
    assert bins[0]["label"] == "38–39"

    errors = page.evaluate(
        """cases => import('/dashboard/static/js/api.js').then(m =>
        cases.map(([status, body]) => { const e = m.errorFromBody(status, body); return [e.message, e.code, e.param]; }))""",
        [
            [
                400,
                json.dumps(
                    {
                        "error": {
                            "message": "Bad n_epochs",
                            "type": "invalid_request_error",
                            "param": "n_epochs",
                            "code": "invalid_value",
                        }
                    }
                ),
            ],
            [502, "<html><body><h1>502 Bad Gateway</h1></body></html>"],
            [500, ""],
        ],
    )
    assert errors[0] == ["Bad n_epochs", "invalid_value", "n_epochs"]
    assert "could not be reached" in errors[1][0] and "502 Bad Gateway" in errors[1][0] and "<" not in errors[1][0]
    assert errors[2][0] == "The server had an error."


def test_pause_resume_and_cancel_buttons_drive_a_running_job(ui, server):
    client = server.client(server.key)
    f = client.files.create(file=("long.jsonl", io.BytesIO(GOOD)), purpose="fine-tune")
    # Many steps, so the job is still running while the buttons are used.
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=f.id,
        seed=5,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}},
    )
    ui.sign_in(server.key)
    page = ui.page
    page.goto(f"{server.url}/#/jobs/{job.id}")
    status = page.locator("#job-status .badge")
    page.get_by_role("button", name="Pause").click(timeout=JOB_TIMEOUT_MS)
    page.locator("#job-status [data-status=paused]").wait_for(timeout=60_000)
    page.get_by_role("button", name="Resume").click()
    page.locator("#job-status [data-status=paused]").wait_for(state="detached")
    assert status.get_attribute("data-status") in ("queued", "running")
    page.get_by_role("button", name="Cancel job").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel job").click()
    page.locator("#job-status [data-status=cancelled]").wait_for(timeout=60_000)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    messages = page.locator("#job-events").inner_text()
    assert "paused" in messages.lower() and "resumed" in messages.lower()
    assert page.get_by_role("button", name="Pause").count() == 0  # a finished job offers no controls
    ui.shot("10-job-cancelled")
