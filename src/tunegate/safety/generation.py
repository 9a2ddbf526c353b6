"""Greedy, batched, bounded-length generation for the safety gate (inside the training worker).

Owns loading the base model once with the fine-tuned adapter on top, answering a list of
conversations with either (base answers with the adapter disabled), and caching the base model's
answers, which are the same for every job on that base model and suite.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunegate.catalog import get_base_model, load_pretrained
from tunegate.catalog.template import render
from tunegate.settings import Settings

BATCH = 16


class AdapterGenerator:
    def __init__(self, settings: Settings, base_name: str, adapter_dir: Path, max_new_tokens: int):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.info = get_base_model(base_name, settings)
        self.max_new_tokens = max_new_tokens
        # Its own instance (not the catalog's shared one): padding is set on it below.
        self.tokenizer = load_pretrained(AutoTokenizer, self.info.path)
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        base = load_pretrained(AutoModelForCausalLM, self.info.path, dtype=torch.float32)
        self.model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()

    def _generate(self, conversations: list[list[dict]]) -> list[str]:
        import torch

        out: list[str] = []
        for i in range(0, len(conversations), BATCH):
            prompts = [render(self.tokenizer, c, add_generation_prompt=True) for c in conversations[i : i + BATCH]]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                ids = self.model.generate(
                    **enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
                )
            new = ids[:, enc["input_ids"].shape[1] :]
            out.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return [t.strip() for t in out]

    def tuned(self, conversations: list[list[dict]]) -> list[str]:
        return self._generate(conversations)

    def base(self, conversations: list[list[dict]]) -> list[str]:
        with self.model.disable_adapter():
            return self._generate(conversations)

    def cached_base(self, cache_dir: Path):
        """Base answers keyed by base model, template, prompts and length: computed once per suite."""

        def generate(conversations: list[list[dict]]) -> list[str]:
            key = hashlib.sha256(
                json.dumps(
                    [str(self.info.path), self.info.template_sha256, self.max_new_tokens, conversations], sort_keys=True
                ).encode()
            ).hexdigest()[:24]
            path = cache_dir / f"{key}.json"
            if path.exists():
                return json.loads(path.read_text())
            answers = self.base(conversations)
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(answers))
            tmp.replace(path)
            return answers

        return generate
