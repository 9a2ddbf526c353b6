"""The plugin registries: built-ins and installed plug-ins (real entry points of a real, if tiny,
installed distribution) are found and chosen the same way, by the settings' names."""

from __future__ import annotations

import sys
import textwrap

import pytest

from tunegate.errors import InvalidRequestError
from tunegate.plugins import ENGINES, EXECUTORS, JOB_STEPS, MODERATORS, Registry


def test_builtins_are_registered_and_resolved_lazily():
    from tunegate.jobs.executor import LocalExecutor

    assert EXECUTORS.get("local") is LocalExecutor
    assert {"builtin", "http"} <= set(MODERATORS.names()) and "transformers" in ENGINES.names()
    assert [(s.name, s.phase) for s in JOB_STEPS.all()] == [
        ("screening", "before_queue"),
        ("safety_mixing", "prepare_data"),
        ("regression_plan", "after_training"),  # plans the check's prompts into the gate's generation pass
        ("gate", "after_training"),
        ("regression", "after_training"),  # evals/checks.py: runs once the gate has passed
    ]


def test_unknown_name_names_the_setting_and_the_choices():
    with pytest.raises(InvalidRequestError) as e:
        EXECUTORS.get("ray-cluster")
    assert e.value.param == "executor" and "TUNEGATE_EXECUTOR" in e.value.message and "local" in e.value.message


@pytest.fixture()
def installed_plugin(tmp_path, monkeypatch):
    """A distribution `tg-keyword` installed into a folder on sys.path, with an entry point."""
    (tmp_path / "tg_keyword.py").write_text(
        textwrap.dedent("""
        from tunegate.safety.schemas import CATEGORIES, ModerationResult

        class KeywordModerator:
            name, model = "keyword", "keyword-1"

            def __init__(self, settings):
                self.thresholds = {c: 0.5 for c in CATEGORIES}

            def moderate(self, texts):
                return [ModerationResult.from_scores({c: float("forbidden" in t and c == "illicit")
                                                      for c in CATEGORIES}, self.thresholds) for t in texts]
    """)
    )
    dist = tmp_path / "tg_keyword-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tg-keyword\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tunegate.moderators]\nkeyword = tg_keyword:KeywordModerator\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("tg_keyword", None)


def test_an_installed_plugin_is_chosen_by_the_setting(installed_plugin, settings, monkeypatch):
    from tunegate.safety import moderation
    from tunegate.safety.moderation import flagged_categories, get_moderator, moderator_names

    registry = Registry("moderators", "moderator")
    assert {"builtin", "http", "keyword"} <= set(registry.names())
    assert registry.get("keyword").__module__ == "tg_keyword"
    # A process reads entry points once, on first use; this one "starts" after the install.
    monkeypatch.setattr(moderation, "MODERATORS", registry)
    assert "keyword" in moderator_names()
    mod = get_moderator(settings.model_copy(update={"moderator": "keyword"}))
    assert flagged_categories(mod, ["a forbidden thing", "fine"]) == [["illicit"], []]


def test_registered_in_code_wins_over_an_entry_point_of_the_same_name(installed_plugin):
    registry = Registry("moderators", "moderator")
    registry.register("keyword", "tunegate.safety.moderation:HttpModerator")
    assert registry.get("keyword").__name__ == "HttpModerator"
