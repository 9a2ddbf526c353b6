"""Extension points: a few named registries, with the built-ins registered the way plug-ins are.

Each registry maps a name to a lazy reference `"module:attribute"`, resolved on first use, so
choosing the HTTP moderator never imports torch and the registry imports no stage. The built-ins
are listed in `BUILTINS` below (like simonw/llm's default plugins); an installed package adds its
own with an entry point in the group `tunegate.<registry>`, e.g. in its pyproject.toml:

    [project.entry-points."tunegate.moderators"]
    my-guard = "my_package.guard:MyGuardModerator"

Settings choose one entry by name: `TUNEGATE_ENGINE`, `TUNEGATE_EXECUTOR`, `TUNEGATE_MODERATOR`
(`Registry.get`); the job pipeline runs every registered `job_steps` entry (`Registry.all`).
Owns the lookup only; what an entry must implement is defined by the stage that uses it
(serve/engine.py, jobs/executor.py, safety/moderation.py, jobs/steps.py for `job_steps` and
`reward_graders`).
"""

from __future__ import annotations

import importlib
import logging
import threading
from importlib.metadata import entry_points
from typing import Any

from tunegate.errors import InvalidRequestError

log = logging.getLogger("tunegate.plugins")

# name -> "module:attribute" per registry; the same form an entry point takes.
BUILTINS: dict[str, dict[str, str]] = {
    "engines": {"transformers": "tunegate.serve.hf_engine:HFEngine", "vllm": "tunegate.serve.vllm_engine:VLLMEngine"},
    "executors": {"local": "tunegate.jobs.executor:LocalExecutor", "ray": "tunegate.jobs.executors.ray:RayExecutor"},
    "moderators": {
        "builtin": "tunegate.safety.moderation:BuiltinModerator",
        "http": "tunegate.safety.moderation:HttpModerator",
        "llama-guard": "tunegate.safety.llama_guard:LlamaGuardModerator",
    },
    # Run in this order within each phase (jobs/steps.py).
    "job_steps": {
        "screening": "tunegate.safety.jobs:SCREENING",
        "safety_mixing": "tunegate.safety.jobs:SAFETY_MIXING",
        "regression_plan": "tunegate.evals.checks:REGRESSION_PLAN",  # before the gate: one pass for both
        "gate": "tunegate.safety.jobs:GATE",
        "regression": "tunegate.evals.checks:REGRESSION",
    },
    # How a reinforcement job's grader is checked and scores answers (jobs/steps.py: RewardGraders).
    "reward_graders": {"graders": "tunegate.graders.rewards:GRADER_REWARDS"},
}


class Registry:
    """Named entries of one kind. Entries registered in code win over entry points of the same name."""

    def __init__(self, kind: str, setting: str | None = None):
        # `setting`: the Settings field that chooses an entry (e.g. "moderator" = TUNEGATE_MODERATOR).
        self.kind, self.setting = kind, setting
        self._refs: dict[str, str | Any] = dict(BUILTINS.get(kind, {}))
        self._loaded: dict[str, Any] = {}
        self._entry_points_read = False
        self._lock = threading.Lock()

    def register(self, name: str, target: str | Any) -> None:
        """Add `name`: an object, or a lazy `"module:attribute"` reference."""
        with self._lock:
            self._refs[name] = target
            self._loaded.pop(name, None)

    def names(self) -> list[str]:
        self._read_entry_points()
        return list(self._refs)

    def get(self, name: str) -> Any:
        """The entry `name`; an unknown name is a 400 naming the setting and the choices."""
        self._read_entry_points()
        if name not in self._refs:
            where = f"Set TUNEGATE_{self.setting.upper()} to" if self.setting else "Use"
            raise InvalidRequestError(
                f"Unknown {self.kind[:-1].replace('_', ' ')} `{name}`. {where} one of: {', '.join(self._refs)}.",
                param=self.setting or self.kind,
                code=f"unknown_{self.kind[:-1]}",
            )
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = _resolve(self._refs[name])
            return self._loaded[name]

    def all(self) -> list[Any]:
        return [self.get(name) for name in self.names()]

    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        with self._lock:
            for ep in entry_points(group=f"tunegate.{self.kind}"):
                if ep.name not in self._refs:
                    self._refs[ep.name] = ep.value
            self._entry_points_read = True


def _resolve(target: str | Any) -> Any:
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attribute.split(".") if attribute else []:
        obj = getattr(obj, part)
    return obj


ENGINES = Registry("engines", "engine")
EXECUTORS = Registry("executors", "executor")
MODERATORS = Registry("moderators", "moderator")
JOB_STEPS = Registry("job_steps")
REWARD_GRADERS = Registry("reward_graders")
