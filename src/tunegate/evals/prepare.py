"""Set-up step: the default base model's answers to the after-training checks' fixed prompts.

Owns computing, once per base model, what every job on it would otherwise generate again: the base
model's answers to the safety gate's default suites (harmful and benign prompts) and to the
regression check's closed-book questions, written into the shared caches those checks read
(`gate_base_cache`, `regression_base_cache`, beside the converted model), and the gate's verdicts
on its base answers (`gate_judgement_cache`). The base answers depend
only on the base model, the prompts and the generation settings — all part of the cache key — so a
job then generates only its fine-tuned model's answers, plus base answers for the prompts that are
its own (its validation file, its cipher or system-prompt probes). Run by `scripts/setup.sh` after
the model conversion (`python -m tunegate.evals.prepare`); a no-op when the caches are full.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tunegate.catalog import DEFAULT_MODEL
from tunegate.evals.checks import MAX_NEW_TOKENS, regression_base_cache
from tunegate.evals.regression import closed_book_conversations, closed_book_questions
from tunegate.safety.gate import default_suites, prejudge_base, suite_conversations
from tunegate.safety.generation import GATE_GENERATION, AdapterGenerator
from tunegate.safety.jobs import gate_base_cache, gate_judgement_cache
from tunegate.safety.moderation import get_moderator
from tunegate.safety.policy import GatePolicy
from tunegate.settings import Settings


def prepare_base_answers(
    settings: Settings, model: str = DEFAULT_MODEL, say: Callable[[str], None] = print
) -> dict[str, int]:
    """Fill both caches for `model` with the default policy's suites; the count of answers generated per check."""
    policy = GatePolicy()
    gen = AdapterGenerator(settings, model, None, policy.max_new_tokens)
    work = {
        "gate": (
            gen.configured(policy.max_new_tokens, GATE_GENERATION),
            gate_base_cache(settings),
            suite_conversations(default_suites(policy)),
        ),
        "regression": (
            gen.configured(MAX_NEW_TOKENS),
            regression_base_cache(settings),
            closed_book_conversations(closed_book_questions()),
        ),
    }
    done = {}
    for name, (g, cache, conversations) in work.items():
        missing = g.missing_base(cache, conversations)
        if missing:
            say(f"Base model {model}: answering the {name} check's {missing} fixed prompts once (~10-60 s) ...")
            start = time.monotonic()
            g.cached_base(cache)(conversations)
            say(f"  done in {time.monotonic() - start:.0f} s.")
        done[name] = missing
    # The gate's verdicts on those base answers, kept for every job too (safety/memo.py).
    judged = prejudge_base(
        work["gate"][0].cached_base(gate_base_cache(settings)),
        get_moderator(settings),
        policy,
        gate_judgement_cache(settings),
    )
    if judged:
        say(f"Base model {model}: judged its {judged} answers to the gate's prompts once.")
    done["gate verdicts"] = judged
    return done


def main() -> None:
    settings = Settings()
    settings.ensure_dirs()
    done = prepare_base_answers(settings, say=lambda m: print(m, flush=True))
    print(f"Base answers for the after-training checks of {DEFAULT_MODEL}: ready ({done} generated now).")


if __name__ == "__main__":
    main()
