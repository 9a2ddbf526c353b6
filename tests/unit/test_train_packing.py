"""Padding-free packing keeps examples apart: packed loss and gradients equal the unpacked ones,
and no example's logits depend on its neighbours in the row."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tunegate.train.config import TrainConfig
from tunegate.train.lora import Precision, build_model, forward_loss
from tunegate.train.packing import pack

CPU = Precision(torch.device("cpu"), None)


def _examples(tokenizer):
    from tunegate.catalog.template import tokenize_examples

    conversations = [
        [{"role": "user", "content": "Name a planet."}, {"role": "assistant", "content": "Mars."}],
        [
            {"role": "system", "content": "Be formal."},
            {"role": "user", "content": "Greet me, please."},
            {"role": "assistant", "content": "Good afternoon. How may I help you today?"},
        ],
        [
            {"role": "user", "content": "Count to three."},
            {"role": "assistant", "content": "One, two, three."},
            {"role": "user", "content": "Backwards?"},
            {"role": "assistant", "content": "Three, two, one."},
        ],
    ]
    return [(t.input_ids, t.loss_mask) for t in tokenize_examples(tokenizer, conversations)]


def _reference_loss(model, ids, mask) -> torch.Tensor:
    """Plain transformers forward (its own SDPA attention, full logits) on one example alone."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    labels = torch.tensor(ids[1:])
    trained = torch.tensor(mask[1:]).bool()
    return F.cross_entropy(logits[trained], labels[trained], reduction="sum")


def _lora_model(tiny_model_path):
    config = TrainConfig(
        base_model="tiny",
        base_model_path=str(tiny_model_path),
        template_sha256="",
        training_file="unused",
        lora_dropout=0.0,
        seed=1,
    )
    model = build_model(config, CPU)
    with torch.no_grad():  # LoRA B starts at zero; make the adapters matter for the comparison
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model.eval()


def test_packed_loss_equals_sum_of_unpacked_losses(tiny_model_path, tokenizer):
    examples = _examples(tokenizer)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="sdpa").eval()
    packed_model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="tunegate_packed").eval()
    with torch.no_grad():
        expected = sum(_reference_loss(reference, ids, mask) for ids, mask in examples)
        loss_sum, stats = forward_loss(packed_model, pack(examples), CPU)
    assert stats.n_loss == sum(sum(m[1:]) for _, m in examples)
    torch.testing.assert_close(loss_sum, expected, rtol=1e-5, atol=1e-4)


def test_packed_gradients_equal_unpacked_gradients(tiny_model_path, tokenizer):
    examples = _examples(tokenizer)
    model = _lora_model(tiny_model_path)
    params = [p for p in model.parameters() if p.requires_grad]

    forward_loss(model, pack(examples), CPU)[0].backward()
    packed = [p.grad.clone() for p in params]
    model.zero_grad()
    for ids, mask in examples:
        forward_loss(model, pack([(ids, mask)]), CPU)[0].backward()
    for a, b in zip(packed, [p.grad for p in params]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_no_example_sees_its_neighbours(tiny_model_path, tokenizer):
    examples = _examples(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="tunegate_packed").eval()
    changed_first = [([7] * 25, [0] * 25), *examples[1:]]  # a different, longer first neighbour

    def logits_of_last_example(row_examples):
        row = pack(row_examples)
        inputs = row.model_inputs("cpu") | {"logits_to_keep": 0}
        start = row.cu_seq_lens.tolist()[-2]
        with torch.no_grad():
            return model(**inputs).logits[0, start:]

    alone = logits_of_last_example(examples[-1:])
    torch.testing.assert_close(logits_of_last_example(examples), alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_of_last_example(changed_first), alone, rtol=1e-5, atol=1e-5)
