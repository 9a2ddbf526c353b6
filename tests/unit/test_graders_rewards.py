"""Graders as reinforcement rewards (graders/rewards.py) and the reinforcement hyperparameter rules
(train/config.py): a job's grader is parsed, checked against every row's fields, and scores answers
with sub-scores and an error rate; "auto" and bounds of compute_multiplier, eval_interval, eval_samples,
reasoning_effort."""

from __future__ import annotations

import json

import pytest

from tunegate import samples
from tunegate.errors import InvalidRequestError
from tunegate.graders.rewards import GRADER_REWARDS, item_fields
from tunegate.plugins import REWARD_GRADERS
from tunegate.settings import Settings
from tunegate.train.config import resolve_hyperparameters, resolve_reinforcement

EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


def _rows(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_registry_holds_the_grader_rewards():
    from tunegate.jobs.steps import reward_graders

    assert reward_graders() is GRADER_REWARDS and REWARD_GRADERS.names() == ["graders"]


def test_check_names_every_row_missing_a_template_field(tmp_path):
    settings = Settings(data_dir=tmp_path)
    good = {"messages": [{"role": "user", "content": "1+1?"}], "answer": "2"}
    path = _rows(tmp_path, [good, {"messages": good["messages"]}, good, {"messages": good["messages"], "x": 1}])
    with pytest.raises(InvalidRequestError) as err:
        GRADER_REWARDS.check(EXACT, settings=settings, files=[("training_file", path)], param="g")
    assert err.value.code == "unknown_template_field" and err.value.param == "g"
    assert "line 2 of the training file has no `answer`" in err.value.message and "line 4" in err.value.message
    stored = GRADER_REWARDS.check(
        EXACT, settings=settings, files=[("training_file", _rows(tmp_path, [good]))], param="g"
    )
    assert stored["operation"] == "eq" and item_fields(_parse(EXACT)) == ["item.answer"]
    with pytest.raises(InvalidRequestError) as err:
        GRADER_REWARDS.check({**EXACT, "operation": "sounds_like"}, settings=settings, files=[], param="g")
    assert err.value.param.startswith("g.") and "operation" in err.value.param and err.value.code == "invalid_grader"


def _parse(grader):
    from tunegate.graders.rewards import parse

    return parse(grader, "g")


def test_reward_fn_scores_answers_with_sub_scores(tmp_path):
    settings = Settings(data_dir=tmp_path)
    reward = GRADER_REWARDS.reward_fn(samples.RFT_FORMAT_GRADER, settings=settings)
    rewards, extra = reward(["Answer: Paris\nConfidence: high", "Answer: Paris", "Paris"], [{}, {}, {}])
    assert rewards == [1.0, 0.5, 0.0]
    assert extra == {
        "grader_error_rate": 0.0,
        "reward_answer": pytest.approx(2 / 3),
        "reward_confidence": pytest.approx(1 / 3),
    }
    exact = GRADER_REWARDS.reward_fn(EXACT, settings=settings)
    assert exact(["2", "3"], [{"answer": "2"}, {"answer": "2"}])[0] == [1.0, 0.0]
    assert exact(["2"], [{}])[1]["grader_error_rate"] == 1.0  # a missing field scores 0 and is counted


def test_reinforcement_hyperparameter_rules():
    assert resolve_reinforcement({}) == {"rft_group_size": 4, "rft_eval_interval": None, "rft_eval_samples": 1}
    assert (
        resolve_reinforcement({"compute_multiplier": 2, "eval_interval": 5, "eval_samples": 3})["rft_group_size"] == 8
    )
    assert resolve_reinforcement({"compute_multiplier": 0.5})["rft_group_size"] == 2
    for hp, param in (
        ({"eval_samples": 0}, "eval_samples"),
        ({"eval_interval": 1.5}, "eval_interval"),
        ({"compute_multiplier": 100}, "compute_multiplier"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
    ):
        with pytest.raises(InvalidRequestError) as err:
            resolve_reinforcement(hp)
        assert err.value.param == f"method.reinforcement.hyperparameters.{param}"
    # batch_size "auto" counts prompts and stops at 8: each prompt costs a group of sampled answers
    assert resolve_hyperparameters(n_examples=1000, method="reinforcement")[1] == 8
    assert resolve_hyperparameters(n_examples=1000, method="supervised")[1] == 32
    assert resolve_hyperparameters(n_examples=100, method="reinforcement")[2] == pytest.approx(1e-4 * (8 / 8) ** 0.5)
