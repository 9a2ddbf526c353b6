"""The evals pages in headless Chromium: the evals list with pass rates, a run page with counts per
testing criterion, and two runs' answers side by side."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

CRITERIA = [
    {
        "type": "string_check",
        "name": "exact",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "eq",
    },
    {
        "type": "text_similarity",
        "name": "close",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "fuzzy_match",
        "pass_threshold": 0.8,
    },
]


def _wait(client, eval_id, run_id):
    import time

    deadline = time.time() + 120
    while client.evals.runs.retrieve(run_id, eval_id=eval_id).status != "completed":
        assert time.time() < deadline
        time.sleep(0.3)


def test_evals_list_run_page_and_side_by_side_answers(ui, server):
    client = server.client(server.key)
    ev = client.evals.create(
        name="capitals",
        data_source_config={
            "type": "custom",
            "item_schema": {"type": "object", "properties": {"q": {"type": "string"}, "answer": {"type": "string"}}},
        },
        testing_criteria=CRITERIA,
    )
    rows = [("Paris", "Paris", "Lyon"), ("Rome", "Rome.", "Rome"), ("Oslo", "no idea", "Oslo")]
    runs = []
    for name, k in (("model A", 1), ("model B", 2)):
        content = [
            {"item": {"q": f"Capital {i}?", "answer": r[0]}, "sample": {"output_text": r[k]}}
            for i, r in enumerate(rows)
        ]
        run = client.evals.runs.create(
            ev.id, name=name, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}}
        )
        _wait(client, ev.id, run.id)
        runs.append(run)

    ui.sign_in(server.key)
    page = ui.page
    page.get_by_role("link", name="Evals").click()
    row = page.locator(f"tr[data-eval-id='{ev.id}']")
    row.wait_for()
    assert "exact" in row.inner_text() and "model A" in row.inner_text() and "33.3%" in row.inner_text()
    ui.check_accessibility()
    row.get_by_role("link", name="model A").click()
    page.get_by_role("heading", name="capitals: model A").wait_for()
    criteria = page.locator("section[aria-labelledby='run-criteria'] tbody tr")
    assert criteria.count() == 2
    assert "exact" in criteria.nth(0).inner_text() and criteria.nth(0).locator("td").nth(1).inner_text() == "1"
    assert criteria.nth(1).locator("td").nth(1).inner_text() == "2"  # close: Paris and Rome.

    page.get_by_label("Compare side by side with run").select_option(runs[1].id)
    side = page.locator("tr[data-item='0'] td").nth(4)
    side.wait_for()
    assert "Lyon" in side.inner_text() and "exact: fail" in side.inner_text()
    assert "Paris" in page.locator("tr[data-item='0'] td").nth(3).inner_text()
    ui.check_accessibility()
    ui.shot("eval-run-side-by-side")
