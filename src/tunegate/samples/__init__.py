"""The project's own sample datasets (written for tunegate, shipped as package data).

Owns the demo dataset "answer format": every assistant reply is exactly two lines,

    Answer: <a one-line answer>
    Confidence: high|medium|low

a behaviour the base SmolLM2-135M-Instruct never shows and learns in a minute or two of CPU
LoRA training, and that `follows_format` checks mechanically. Files: a training set
(`demo_train`, 106 chat examples, some multi-turn, some with system prompts), a validation set
(`demo_valid`, 15) and held-out prompts (`demo_prompts`, 16, in neither set). Does not own
uploading or training them (the demo command and the trainer do that).

The same files make the DPO preference task (`preference_pairs`, `write_preference_file`): the
two-line reply is preferred over the same answer said plainly, or over replies the caller supplies
(the base model's own greedy replies make on-policy pairs, which is what moves greedy decoding); and
the reinforcement task (`rft_prompts`, `RFT_FORMAT_GRADER`): the questions alone, each asking for
the two-line format, rewarded by a grader for each of the two lines the answer carries.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path

from tunegate.jsonl import iter_jsonl

FILES = {
    "demo_train": "answer_format_train.jsonl",
    "demo_valid": "answer_format_valid.jsonl",
    "demo_prompts": "answer_format_prompts.jsonl",
}
# Hyperparameters for the demo dataset on SmolLM2-135M-Instruct: the format is learned within
# these 28 optimizer steps (measured by tests/e2e/test_trainer_learns.py; the demo with 2 epochs
# followed the format on 16 of 16 held-out prompts, with 3 epochs 15 of 16, at two thirds the time).
DEMO_HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 5.0}

_FORMAT = re.compile(r"Answer: \S[^\n]*\nConfidence: (high|medium|low)\.?")


def path(name: str) -> Path:
    """The file of a sample dataset, by name (`demo_train`, `demo_valid`, `demo_prompts`) or file name."""
    filename = FILES.get(name, name)
    if filename not in FILES.values():
        raise KeyError(f"Unknown sample `{name}`; samples are {', '.join(FILES)}.")
    return Path(str(files(__package__).joinpath(filename)))


def held_out_prompts() -> list[list[dict]]:
    """The held-out conversations (each a list of messages ending with a user turn)."""
    return [row["messages"] for row in iter_jsonl(path("demo_prompts"))]


def preference_pairs(name: str, rejected: list[str] | None = None) -> list[dict]:
    """The chat sample `name` as DPO pairs: the formatted reply preferred over its plain answer line,
    or over `rejected[i]` for the i-th example when given (e.g. the base model's own reply to the same
    prompt: on-policy pairs, the way the DPO paper builds its data, so the loss pushes down exactly
    what the model would otherwise say; only the first len(rejected) examples then)."""
    pairs = []
    for i, row in enumerate(iter_jsonl(path(name))):
        if rejected is not None and i >= len(rejected):
            break
        messages = row["messages"]
        reply = messages[-1]["content"]
        plain = reply.splitlines()[0].removeprefix("Answer: ").strip()
        context = [{k: v for k, v in m.items() if k != "weight"} for m in messages[:-1]]
        pairs.append(
            {
                "input": {"messages": context},
                "preferred_output": [{"role": "assistant", "content": reply}],
                "non_preferred_output": [{"role": "assistant", "content": plain if rejected is None else rejected[i]}],
            }
        )
    return pairs


def style_pairs(name: str, replies: list[str]) -> list[dict]:
    """DPO pairs that differ only in form: for the i-th example of `name`, `replies[i]` (e.g. the base
    model's own greedy reply) cut to its first sentence is the rejected answer, and the same sentence in
    the two-line form, with the example's confidence, the preferred one. The shared words cancel in the
    loss, so what is learned is the opening "Answer:" and the closing "Confidence:" line."""
    pairs = []
    for row, reply in zip(iter_jsonl(path(name)), replies):
        messages = row["messages"]
        level = messages[-1]["content"].rsplit("Confidence:", 1)[-1].strip()
        first = reply.strip().splitlines()[0].strip() if reply.strip() else "I do not know."
        match = re.match(r"(.+?[.!?])(\s|$)", first)
        sentence = match.group(1) if match else first
        context = [{k: v for k, v in m.items() if k != "weight"} for m in messages[:-1]]
        pairs.append(
            {
                "input": {"messages": context},
                "preferred_output": [{"role": "assistant", "content": f"Answer: {sentence}\nConfidence: {level}"}],
                "non_preferred_output": [{"role": "assistant", "content": sentence}],
            }
        )
    return pairs


def prompt_messages(name: str) -> list[list[dict]]:
    """The conversations of the chat sample `name` without their last (assistant) reply."""
    return [
        [{k: v for k, v in m.items() if k != "weight"} for m in row["messages"][:-1]] for row in iter_jsonl(path(name))
    ]


def write_preference_file(name: str, out: Path) -> Path:
    out = Path(out)
    out.write_text("".join(json.dumps(p) + "\n" for p in preference_pairs(name)), encoding="utf-8")
    return out


def follows_format(text: str) -> bool:
    """True when a reply is exactly the two lines "Answer: ..." and "Confidence: high|medium|low"."""
    lines = [line.strip() for line in text.strip().splitlines()]
    return _FORMAT.fullmatch("\n".join(lines)) is not None


RFT_INSTRUCTION = " Reply in two lines: first 'Answer:' and your answer, then 'Confidence:' and high, medium or low."
# Half a point for each line of the format: partial credit gives the sampled groups a signal early.
RFT_FORMAT_GRADER = {
    "type": "multi",
    "name": "answer_format",
    "graders": {
        "answer": {
            "type": "string_check",
            "name": "answer",
            "input": "{{sample.output_text}}",
            "reference": "Answer:",
            "operation": "like",
        },
        "confidence": {
            "type": "string_check",
            "name": "confidence",
            "input": "{{sample.output_text}}",
            "reference": "Confidence:",
            "operation": "like",
        },
    },
    "calculate_output": "0.5 * answer + 0.5 * confidence",
}


def rft_prompts(name: str) -> list[dict]:
    """Reinforcement rows: the user question of each example of `name` (`demo_train`, `demo_valid`,
    `demo_prompts`) with the format instruction appended, and the plain question as an extra field."""
    rows = []
    for row in iter_jsonl(path(name)):
        question = next(m["content"] for m in row["messages"] if m["role"] == "user")
        rows.append({"messages": [{"role": "user", "content": question + RFT_INSTRUCTION}], "question": question})
    return rows
