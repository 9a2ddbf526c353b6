"""Model families (Llama 3, Qwen 2.5/3, Mistral, Gemma 2/3, Phi 3/4) on tiny random models of each
architecture, with templates written in each family's documented format (tests/families.py):
template features, the loss mask (trained tokens decode to exactly the answers plus end of turn),
token counts, validation of roles a template rejects, the system-role conversion and its hash,
packed training against plain transformers, and serving that stops at the family's end of turn."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from tests.families import FAMILIES, build_family_model, build_family_tokenizer
from tunegate.catalog.features import CONTENT_EDITS, effective_template_sha256, template_features
from tunegate.catalog.template import count_rendered, render, render_with_spans, tokenize_rendered
from tunegate.files.validate import validate_file

NAMES = list(FAMILIES)
CONVERSATIONS = [
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Red."},
    ],
    [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "Five, surely.", "weight": 0},
        {"role": "user", "content": "Check again."},
        {"role": "assistant", "content": "Sorry: 2 + 2 = 4.\nSure."},
    ],
    [
        {"role": "user", "content": "Say hello in French."},
        {"role": "assistant", "content": [{"type": "text", "text": "  Bonjour ! "}]},
        {"role": "user", "content": "And in Spanish?"},
        {"role": "assistant", "content": "\n\nHola."},
    ],
]


@pytest.fixture(scope="module")
def tokenizers(smol_path):
    return {name: build_family_tokenizer(f, smol_path) for name, f in FAMILIES.items()}


@pytest.mark.parametrize("name", NAMES)
def test_template_features_match_the_family(tokenizers, name):
    family, tok = FAMILIES[name], tokenizers[name]
    f = template_features(tok)
    assert f.eot_token == family.eot and f.eot_token_id == tok.convert_tokens_to_ids(family.eot)
    assert (f.system_role, f.fold_system) == (family.system_role, not family.system_role)
    assert (f.tool_role, f.tools) == (family.tool_role, family.tools)
    assert f.generation_prompt == (name != "mistral")  # Mistral's prompt ends with [/INST]


def _text(content):
    return content if isinstance(content, str) else "".join(p["text"] for p in content)


@pytest.mark.parametrize("name", NAMES)
def test_trained_tokens_are_the_answers_plus_end_of_turn(tokenizers, name):
    family, tok = FAMILIES[name], tokenizers[name]
    edit = CONTENT_EDITS[template_features(tok).content_edit]
    rendered = [render_with_spans(tok, c) for c in CONVERSATIONS]
    for conv, r, t in zip(CONVERSATIONS, rendered, tokenize_rendered(tok, rendered)):
        # The marks leave exactly the text the model is prompted with.
        assert r.text == render(tok, conv)
        runs, run = [], []
        for i, m in zip(t.input_ids, t.loss_mask):
            if m:
                run.append(i)
            elif run:
                runs.append(run)
                run = []
        runs += [run] if run else []
        decoded = [tok.decode(run) for run in runs]
        expected = [
            edit(_text(m["content"])) + family.eot for m in conv if m["role"] == "assistant" and m.get("weight", 1) != 0
        ]
        # Exactly, up to an answer's leading whitespace: a tokenizer may merge it with the template's text
        # before it (Mistral's `' ' + content` joins the first word; a leading space joins Qwen's newline).
        assert [d.lstrip() for d in decoded] == [e.lstrip() for e in expected]
        for d, e in zip(decoded, expected):
            if not e[0].isspace():
                assert d == (" " + e if name == "mistral" else e)
        assert "Five" not in "".join(decoded)
    # Token counts of validation are the trainer's counts.
    counts = count_rendered(tok, rendered, max_len=12)
    assert counts == [(len(t.input_ids), t.n_trained, sum(t.loss_mask[:12])) for t in tokenize_rendered(tok, rendered)]


@pytest.mark.parametrize("name", NAMES)
def test_generation_prompt_opens_the_assistant_turn(tokenizers, name):
    tok = tokenizers[name]
    prompt = render(tok, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    ends = {
        "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "qwen2.5": "<|im_start|>assistant\n",
        "qwen3": "<|im_start|>assistant\n",
        "mistral": "[INST] Hi[/INST]",
        "gemma2": "<start_of_turn>model\n",
        "gemma3": "<start_of_turn>model\n",
        "phi3": "<|assistant|>\n",
        "phi4": "<|im_start|>assistant<|im_sep|>",
    }
    assert prompt.endswith(ends[name])


def test_system_role_folded_for_gemma2_as_gemma3_does_and_hashed(tokenizers):
    conv = CONVERSATIONS[0]
    # Gemma 2's own template refuses a system message; tunegate folds it the way Gemma 3's template does.
    with pytest.raises(Exception, match="System role not supported"):
        tokenizers["gemma2"].apply_chat_template(conv, tokenize=False)
    assert render(tokenizers["gemma2"], conv) == render(tokenizers["gemma3"], conv)
    assert "<start_of_turn>user\nYou answer briefly.\n\nName a colour.<end_of_turn>" in render(
        tokenizers["gemma2"], conv
    )
    # The conversion is part of the hash adapters are tied to; templates that need none keep the plain hash.
    from tunegate.catalog import template_sha256

    for name, tok in tokenizers.items():
        plain = template_sha256(tok.chat_template)
        assert (effective_template_sha256(tok.chat_template, template_features(tok)) != plain) == (name == "gemma2")


def test_rejected_roles_are_validation_errors_with_line_numbers(tokenizers, tmp_path):
    lines = [
        {"messages": CONVERSATIONS[0]},
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "assistant", "content": "It is sunny."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ]
        },
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    for name in ("gemma2", "mistral", "phi3"):
        report = validate_file(path, tokenizer=tokenizers[name], context_length=4096)
        codes = {(p.code, p.line) for p in report.errors}
        assert ("unsupported_role", 2) in codes, (name, report.errors)
        assert next(p for p in report.errors if p.code == "unsupported_role").message.startswith(
            "This base model's chat template does not accept `tool` messages"
        )
        if name != "phi3":  # Gemma and Mistral require alternating turns; Phi 3's template does not
            assert ("template_error", 3) in codes
    report = validate_file(path, tokenizer=tokenizers["qwen2.5"], context_length=4096)
    assert {p.code for p in report.errors} == {"too_few_examples"}, report.errors  # Qwen renders all three


@pytest.fixture(scope="module")
def family_models(smol_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: build_family_model(f, root / name, smol_path) for name, f in FAMILIES.items()}


@pytest.mark.parametrize("name", NAMES)
def test_packed_training_loss_equals_plain_transformers(family_models, tokenizers, name):
    """The trainer's packed forward (LoRA on the family's projections) gives the loss of an unpacked eager
    forward of each example, for every architecture (Gemma's capped, windowed attention included)."""
    from transformers import AutoModelForCausalLM

    from tunegate.train.config import TrainConfig
    from tunegate.train.lora import Precision, build_model, forward_loss
    from tunegate.train.packing import pack

    path = family_models[name]
    tok = tokenizers[name]
    examples = [
        (t.input_ids, t.loss_mask) for t in tokenize_rendered(tok, [render_with_spans(tok, c) for c in CONVERSATIONS])
    ]
    config = TrainConfig(
        base_model=name, base_model_path=str(path), template_sha256="x", training_file="x", lora_dropout=0.0
    )
    precision = Precision(torch.device("cpu"), None)
    model = build_model(config, precision)
    trained = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    if name.startswith("phi"):
        assert {"qkv_proj", "gate_up_proj", "o_proj", "down_proj"} <= trained
    else:
        assert {"q_proj", "v_proj", "gate_proj", "down_proj"} <= trained
    loss_sum, stats = forward_loss(model, pack(examples), precision)
    loss_sum.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    expected, n = 0.0, 0
    with torch.no_grad():
        for ids, mask in examples:
            logits = plain(torch.tensor([ids])).logits[0, :-1]
            keep = torch.tensor(mask[1:], dtype=torch.bool)
            expected += float(
                torch.nn.functional.cross_entropy(logits[keep], torch.tensor(ids[1:])[keep], reduction="sum")
            )
            n += int(keep.sum())
    assert stats.n_loss == n
    # LoRA B starts at zero, so the adapted model is the base model at initialisation.
    assert stats.loss_sum == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", ["gemma2", "phi3", "qwen3"])
def test_serving_renders_with_the_family_template_and_stops_at_its_end_of_turn(family_models, name, tmp_path):
    """The engine treats the template's end-of-turn token as the end of an answer, even where it is not
    eos_token (Gemma's <end_of_turn>, Phi 3's <|end|>): a model whose every next token is the eot answers
    with nothing and finish_reason "stop"."""
    import shutil

    from safetensors.torch import load_file, save_file

    from tests.conftest import MODEL_CACHE
    from tunegate.catalog import get_base_model
    from tunegate.serve.engine import ServableModel
    from tunegate.serve.hf_engine import HFEngine
    from tunegate.serve.protocol import ChatCompletionRequest
    from tunegate.serve.service import ChatService
    from tunegate.settings import Settings

    folder = tmp_path / name
    shutil.copytree(family_models[name], folder)
    eot = FAMILIES[name].eot
    tok = build_family_tokenizer(FAMILIES[name], folder)
    eot_id = tok.convert_tokens_to_ids(eot)
    assert eot_id != tok.eos_token_id or name == "qwen3"
    # With every attention and MLP output zeroed, the last hidden state is the (normalised) embedding of the
    # current token; embeddings (0 in all but dimension 0) and an LM head scoring dimension 0 highest for
    # the eot make the eot the greedy next token after any prompt.
    weights = load_file(folder / "model.safetensors")
    for key in weights:
        if key.endswith(("o_proj.weight", "down_proj.weight")):
            weights[key] = torch.zeros_like(weights[key])
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        if key in weights:
            table = torch.zeros_like(weights[key])
            table[:, 0] = 1.0
            table[eot_id, 0] = 2.0
            weights[key] = table
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    settings = Settings(
        data_dir=tmp_path / "d", model_cache_dir=MODEL_CACHE, base_models={name: folder}, torch_threads=1
    )
    base = get_base_model(name, settings)
    assert base.features.eot_token == eot

    async def go():
        engine = HFEngine(settings)
        await engine.start()
        try:
            service = ChatService(engine)
            request = ChatCompletionRequest.model_validate(
                {
                    "model": name,
                    "max_tokens": 5,
                    "temperature": 0,
                    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                }
            )
            return await service.create(request, ServableModel(name, base))
        finally:
            await engine.stop()

    response = asyncio.run(go())
    choice = response.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content == ""
