"""The frozen training config and the documented "auto" hyperparameter rules."""

from __future__ import annotations

import json

import pytest

from tunegate.errors import InvalidRequestError
from tunegate.train.config import BASE_LEARNING_RATE, TrainConfig, resolve_hyperparameters


def _config(**kw) -> TrainConfig:
    return TrainConfig(base_model="m", base_model_path="/m", template_sha256="abc", training_file="/t.jsonl", **kw)


@pytest.mark.parametrize(
    ("n_examples", "epochs"), [(10, 10), (20, 5), (34, 3), (100, 3), (8_000, 3), (10_000, 2), (30_000, 1), (1, 25)]
)
def test_auto_epochs_keep_examples_times_epochs_in_range(n_examples, epochs):
    n_epochs, _, _ = resolve_hyperparameters(n_examples=n_examples)
    assert n_epochs == epochs
    assert 1 <= n_epochs <= 25


@pytest.mark.parametrize(("n_examples", "batch"), [(5, 1), (40, 4), (100, 8), (170, 16), (5_000, 32)])
def test_auto_batch_size_is_a_power_of_two_near_a_tenth_of_the_examples(n_examples, batch):
    assert resolve_hyperparameters(n_examples=n_examples)[1] == batch


def test_auto_batch_size_shrinks_for_long_examples():
    assert resolve_hyperparameters(n_examples=5_000, n_tokens=5_000 * 4_000)[1] == 16


def test_auto_learning_rate_scales_with_the_square_root_of_the_batch():
    assert resolve_hyperparameters(batch_size=8, n_examples=100)[2] == pytest.approx(BASE_LEARNING_RATE)
    assert resolve_hyperparameters(batch_size=32, n_examples=100)[2] == pytest.approx(2 * BASE_LEARNING_RATE)
    assert resolve_hyperparameters(batch_size=1, n_examples=100)[2] == pytest.approx(0.5 * BASE_LEARNING_RATE)


def test_explicit_numbers_are_kept():
    assert resolve_hyperparameters(4, 2, 0.5, n_examples=100) == (4, 2, pytest.approx(0.5 * BASE_LEARNING_RATE))


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"n_epochs": 0}, "n_epochs"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"learning_rate_multiplier": -1}, "learning_rate_multiplier"),
        ({"n_epochs": "many"}, "n_epochs"),
    ],
)
def test_out_of_range_hyperparameters_name_the_field(kw, param):
    with pytest.raises(InvalidRequestError) as err:
        resolve_hyperparameters(**kw, n_examples=100)
    assert err.value.param.endswith(param)


def test_config_round_trips_through_json():
    config = _config(n_epochs=2, target_modules=["q_proj", "v_proj"], seed=None, validation_file="/v.jsonl")
    assert config.target_modules == ("q_proj", "v_proj") and config.seed == 0
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())) | {"from_a_newer_version": 1})
    assert again == config


def test_invalid_config_reports_every_problem_with_its_field():
    with pytest.raises(InvalidRequestError) as err:
        _config(lora_r=0, lora_dropout=1.5, device="tpu")
    assert err.value.param == "lora_r"
    assert "`lora_dropout`" in err.value.message and "`device`" in err.value.message


@pytest.mark.parametrize("name", ["n_epochs", "batch_size", "learning_rate_multiplier"])
def test_the_api_schema_and_the_trainer_share_the_bounds(name):
    """One range per hyperparameter: a value the jobs API accepts is one the trainer accepts, and
    the first value outside is refused by both (the learning-rate multipliers once differed)."""
    from pydantic import ValidationError

    from tunegate.jobs.schemas import SupervisedHyperparameters
    from tunegate.train.config import HYPERPARAMETER_BOUNDS

    bound = HYPERPARAMETER_BOUNDS[name]
    step = 1 if bound.kind is int else 1e-9
    inside = [bound.high, bound.low + step if bound.low_open else bound.low]
    outside = [bound.high + step, bound.low if bound.low_open else bound.low - step]
    for value in inside:
        SupervisedHyperparameters(**{name: value})
        resolve_hyperparameters(**{name: value}, n_examples=100)
    for value in outside:
        with pytest.raises(ValidationError):
            SupervisedHyperparameters(**{name: value})
        with pytest.raises(InvalidRequestError) as e:
            resolve_hyperparameters(**{name: value}, n_examples=100)
        assert e.value.param.endswith(name) and bound.describe() in e.value.message
