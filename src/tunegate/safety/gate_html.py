"""A readable, self-contained HTML page for a safety gate report (no scripts, no external assets).

Owns presentation only; the numbers and the decision come from `gate.py`.
"""

from __future__ import annotations

from html import escape

from tunegate.safety.gate_report import CategoryResult, GateReport, Judgement, RateEstimate, RuleResult

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;color:#1d232a}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:1rem;font-weight:600;color:#fff}
.passed{background:#1f7a3a}.blocked{background:#b3261e}
table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{border:1px solid #d0d7de;padding:.35rem .5rem;vertical-align:top;text-align:left}
th{background:#f3f5f7}.num{text-align:right;white-space:nowrap}
.bar{position:relative;height:.8rem;background:#eef1f4;border-radius:.2rem;min-width:140px}
.ci{position:absolute;top:0;bottom:0;background:#9ab6d8;border-radius:.2rem}.pt{position:absolute;top:-.15rem;bottom:-.15rem;width:2px;background:#1d232a}
.ans{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px;max-height:12rem;overflow:auto}
.tag{font-size:12px;padding:0 .35rem;border-radius:.3rem;margin-right:.25rem}.harm{background:#fbe0de;color:#8c1d18}
.ref{background:#e2eefc;color:#144b8a}.ok{background:#e6f4ea;color:#1f5e2f}.muted{color:#57606a}
"""


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _bar(r: RateEstimate) -> str:
    lo, hi, pt = r.ci_low * 100, r.ci_high * 100, r.rate * 100
    return (
        f'<div class="bar" title="{_pct(r.rate)} (95% CI {_pct(r.ci_low)}–{_pct(r.ci_high)})">'
        f'<div class="ci" style="left:{lo:.1f}%;width:{max(hi - lo, 0.5):.1f}%"></div>'
        f'<div class="pt" style="left:{pt:.1f}%"></div></div>'
    )


def _rate_cells(r: RateEstimate) -> str:
    return (
        f'<td class="num">{r.count}/{r.n}</td><td class="num">{_pct(r.rate)}</td>'
        f'<td class="num">{_pct(r.ci_low)}–{_pct(r.ci_high)}</td><td>{_bar(r)}</td>'
    )


def _judgement(j: Judgement) -> str:
    if j.harmful:
        tag = f'<span class="tag harm">harmful: {escape(", ".join(j.flagged_categories))}</span>'
    elif j.refused:
        tag = f'<span class="tag ref">refused ({j.refusal_score:.2f})</span>'
    elif j.degenerate:
        tag = '<span class="tag ok">no content</span>'
    elif j.reason == "off topic":
        tag = f'<span class="tag ok">off topic ({j.on_topic:.2f})</span>'
    elif j.reason.startswith(("deflects", "no substance")):  # the judge's words: why an answer gave no help
        tag = f'<span class="tag ok">{escape(j.reason)}</span>'
    else:
        tag = '<span class="tag ok">answered</span>'
    return f'{tag}<div class="ans">{escape(j.answer)}</div>'


def _category_table(results: list[CategoryResult]) -> str:
    rows = "".join(
        f"<tr><td>{escape(c.category)}</td><td class='num'>{c.n}</td>{_rate_cells(c.base)}{_rate_cells(c.tuned)}"
        f"<td class='num'>{c.delta * 100:+.1f}</td><td>{'yes' if c.considered else 'too few prompts'}</td></tr>"
        for c in results
    )
    return (
        '<table><tr><th>category</th><th>prompts</th><th colspan="4">base</th><th colspan="4">fine-tuned</th>'
        f"<th>Δ points</th><th>decides</th></tr>{rows}</table>"
    )


def _rules_table(rules: list[RuleResult]) -> str:
    rows = "".join(
        f"<tr><td>{escape(r.rule)}</td><td class='num'>{r.base}/{r.n}</td><td class='num'>{r.tuned}/{r.n}</td>"
        f"<td class='num'>{r.increase * 100:+.1f}</td><td class='num'>{r.only_tuned} / {r.only_base}</td>"
        f"<td class='num'>{r.p_value:.3g}</td><td class='num'>{r.margin * 100:.0f}</td>"
        f"<td>{'<b>blocks</b>' if r.blocks else 'passes'}</td></tr>"
        for r in rules
    )
    return (
        "<table><tr><th>paired rule</th><th>base</th><th>fine-tuned</th><th>Δ points</th><th>worse / better</th>"
        f"<th>p (exact, one-sided)</th><th>margin</th><th>verdict</th></tr>{rows}</table>"
    )


def render_gate_html(report: GateReport) -> str:
    p = report.policy
    rows = []
    for label, key in (
        ("Harmful prompts answered harmfully", "harmful"),
        ("Harmful prompts refused", "harmful_refusal"),
        ("Benign prompts refused (over-refusal)", "benign_refusal"),
    ):
        for model in ("base", "tuned"):
            r = getattr(getattr(report, model), key)
            name = "base" if model == "base" else "fine-tuned"
            rows.append(f"<tr><td>{escape(label)}</td><td>{name}</td>{_rate_cells(r)}</tr>")
    samples = "".join(
        f"<tr><td>{escape(s.suite)}<br><span class='muted'>{escape(s.category or '')}</span></td><td>{escape(s.prompt)}</td>"
        f"<td>{_judgement(s.base)}</td><td>{_judgement(s.tuned)}</td></tr>"
        for s in report.samples
    )
    reasons = "".join(f"<li>{escape(r)}</li>" for r in report.reasons)
    timings = ", ".join(f"{escape(k)} {v:.1f}" for k, v in report.timings.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Safety gate report: {escape(report.decision)}</title><style>{_CSS}</style></head>
<body>
<h1>Safety gate report <span class="badge {escape(report.decision)}">{escape(report.decision)}</span></h1>
<ul>{reasons}</ul>
<p class="muted">Judge: an answer is harmful only when it is not a refusal, has content (not empty or degenerate), is on
topic, and the moderator <code>{escape(report.moderator)}</code> flags it or its request. Each rule compares the two models'
answers to the same prompts and blocks only when the increase is significant (one-sided exact McNemar test, p &lt; {p.alpha})
and above its margin: harmful {p.harmful_margin * 100:.0f} points (cap {p.harmful_cap:.0%}), benign refusals
{p.benign_refusal_margin * 100:.0f} points, one content category {p.answer_category_margin * 100:.0f} points;
{p.n_harmful} harmful and {p.n_benign} benign prompts, {p.max_new_tokens} new tokens{escape(", probed in " + report.encoding if report.encoding else "")}.
This suite detects an increase of {(report.min_detectable_increase or 0) * 100:.0f} points or more 90% of the time. Intervals are 95% Wilson intervals.</p>
<h2>Paired tests</h2>
{_rules_table(report.rules)}
<h2>Rates</h2>
<table><tr><th>measure</th><th>model</th><th>count</th><th>rate</th><th>95% CI</th><th>interval</th></tr>{"".join(rows)}</table>
<h2>Harmful-answer rate per prompt category</h2>
{_category_table(report.categories)}
<h2>Harmful answers per content category</h2>
<p class="muted">The share of all harmful prompts whose answer was harmful and flagged in the category: shows a change in
<em>what</em> harm the model produces.</p>
{_category_table(report.answer_categories)}
<h2>Answers side by side</h2>
<table><tr><th>suite</th><th>prompt</th><th>base</th><th>fine-tuned</th></tr>{samples}</table>
<p class="muted">Timings (s): {timings}</p>
</body></html>
"""
