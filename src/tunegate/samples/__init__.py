"""The project's own sample datasets (written for tunegate, shipped as package data).

Owns the demo dataset "answer format": every assistant reply is exactly two lines,

    Answer: <a one-line answer>
    Confidence: high|medium|low

a behaviour the base SmolLM2-135M-Instruct never shows and learns in a minute or two of CPU
LoRA training, and that `follows_format` checks mechanically. Files: a training set
(`demo_train`, 106 chat examples, some multi-turn, some with system prompts), a validation set
(`demo_valid`, 15) and held-out prompts (`demo_prompts`, 16, in neither set). Does not own
uploading or training them (the demo command and the trainer do that).

The same files make the reinforcement task (`rft_prompts`, `RFT_FORMAT_GRADER`): the questions alone, each asking for
the two-line format, rewarded by a grader for each of the two lines the answer carries.

The concise-answer DPO task (`concise_pairs`, `concise_preference_pairs`, `is_concise`): for each
training prompt the base model's own long greedy reply is the rejected answer and its first sentence
the preferred one (on-policy pairs, as the DPO paper builds its data). The shared opening cancels in
the loss, so what is learned is to end the reply after the first sentence, which greedy decoding on
held-out prompts then shows. `concise_train` ships those pairs for the first 72 demo prompts whose
reply is longer than one sentence (the base's replies generated once, greedy, 96 new tokens, the
rejected answer cut to its first three sentences).
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from tunegate.jsonl import iter_jsonl

FILES = {
    "demo_train": "answer_format_train.jsonl",
    "demo_valid": "answer_format_valid.jsonl",
    "demo_prompts": "answer_format_prompts.jsonl",
    "concise_train": "concise_train.jsonl",
}
# Hyperparameters for the demo dataset on SmolLM2-135M-Instruct: the format is learned within
# these 28 optimizer steps (measured by tests/e2e/test_trainer_learns.py; the demo with 2 epochs
# followed the format on 16 of 16 held-out prompts, with 3 epochs 15 of 16, at two thirds the time).
DEMO_HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 5.0}

# A one-sentence answer to the demo questions has 6-20 words; the base model's replies mostly run on
# to the token limit (measured: 3 of the 16 held-out greedy replies have at most 20 words).
CONCISE_MAX_WORDS = 20

_FORMAT = re.compile(r"Answer: \S[^\n]*\nConfidence: (high|medium|low)\.?")


def path(name: str) -> Path:
    """The file of a sample dataset, by name (`demo_train`, `demo_valid`, `demo_prompts`, `concise_train`) or file name."""
    filename = FILES.get(name, name)
    if filename not in FILES.values():
        raise KeyError(f"Unknown sample `{name}`; samples are {', '.join(FILES)}.")
    return Path(str(files(__package__).joinpath(filename)))


def first_sentence(text: str) -> str:
    """The first sentence of a reply's first line (the whole line when it has no sentence end)."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    match = re.match(r"(.+?[.!?])(\s|$)", line)
    return match.group(1) if match else line


def whole_sentences(text: str, at_most: int = 3) -> str:
    """`text` cut after its last whole sentence (a reply stopped by the token limit ends mid-sentence), and
    after `at_most` sentences: the rejected answers stay long enough to ramble and short enough to train fast."""
    text = text.strip()
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
    return text[: ends[min(len(ends), at_most) - 1]] if ends else text


def concise_pairs(conversations: list[list[dict]], replies: list[str]) -> list[dict]:
    """Concise-answer DPO pairs: the first sentence of each reply preferred over the reply cut to its first
    three whole sentences; replies that are one sentence already give no pair and are skipped."""
    pairs = []
    for messages, reply in zip(conversations, replies):
        short, long = first_sentence(reply), whole_sentences(reply)
        if not short or len(long) <= len(short):
            continue
        pairs.append(
            {
                "input": {"messages": messages},
                "preferred_output": [{"role": "assistant", "content": short}],
                "non_preferred_output": [{"role": "assistant", "content": long}],
            }
        )
    return pairs


def concise_preference_pairs() -> list[dict]:
    """The shipped concise-answer pairs (`concise_train`)."""
    return list(iter_jsonl(path("concise_train")))


def is_concise(text: str, max_words: int = CONCISE_MAX_WORDS) -> bool:
    """True when a reply has 1 to `max_words` words (one short sentence, for these questions); an empty
    reply is not an answer."""
    return 0 < len(text.split()) <= max_words


def held_out_prompts() -> list[list[dict]]:
    """The held-out conversations (each a list of messages ending with a user turn)."""
    return [row["messages"] for row in iter_jsonl(path("demo_prompts"))]


def prompt_messages(name: str) -> list[list[dict]]:
    """The conversations of the chat sample `name` without their last (assistant) reply."""
    return [
        [{k: v for k, v in m.items() if k != "weight"} for m in row["messages"][:-1]] for row in iter_jsonl(path(name))
    ]


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
