"""Tiny random models of each model family tunegate supports, for tests.

Each family gets the real SmolLM2 tokenizer with the family's special tokens added, a chat template
written here from the family's documented prompt format (Llama 3, Qwen 2.5, Qwen 3, Mistral v0.3,
Gemma 2, Gemma 3, Phi 3, Phi 4), and a randomly initialised model of the family's transformers
architecture. The templates keep the points where the families differ: BOS handling, default system
prompts, system role rejected (Gemma 2) or folded by the template (Gemma 3, Mistral), trimmed
contents (Llama 3, Gemma, Mistral), the end-of-turn token, tool roles and tool definitions, and
Qwen 3's empty think block before the final answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LLAMA3 = """{{- bos_token }}
{%- if tools %}{{- '<|start_header_id|>system<|end_header_id|>\\n\\nEnvironment: ipython\\n' }}
{%- for t in tools %}{{- t | tojson }}{{- '\\n' }}{%- endfor %}{{- '<|eot_id|>' }}{%- endif %}
{%- for message in messages %}
{%- set role = 'ipython' if message['role'] == 'tool' else message['role'] %}
{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"""

QWEN25 = """{%- if tools %}{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}
{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}
{{- '\\n\\n# Tools\\n\\n<tools>' }}{%- for t in tools %}{{- '\\n' }}{{- t | tojson }}{%- endfor %}{{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""

QWEN3 = """{%- if tools %}{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\n<tools>' }}{%- for t in tools %}{{- '\\n' }}{{- t | tojson }}{%- endfor %}{{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}
{%- if message.role == 'user' and ns.last_query_index == messages|length - 1 %}{%- set ns.last_query_index = index %}{%- endif %}
{%- endfor %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{%- if loop.index0 > ns.last_query_index and loop.last %}
{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message.content.lstrip('\\n') + '<|im_end|>\\n' }}
{%- else %}{{- '<|im_start|>assistant\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}
{%- elif message.role == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}"""

MISTRAL = """{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}
{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
{%- endif %}
{%- if message['role'] == 'user' %}
{%- if loop.first and system_message is defined %}{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}
{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}
{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] | trim + eos_token }}
{%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
{%- endif %}
{%- endfor %}"""

GEMMA2 = """{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}
{%- for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}
{%- if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}
{{- '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}
{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"""

GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' %}{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}
{%- set loop_messages = messages[1:] %}{%- else %}{%- set first_user_prefix = '' %}{%- set loop_messages = messages %}{%- endif %}
{%- for message in loop_messages %}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}
{{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"""

PHI3 = """{%- for message in messages %}
{%- if message['role'] in ['system', 'user', 'assistant'] %}
{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- else %}{{- eos_token }}{%- endif %}"""

PHI4 = """{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant<|im_sep|>' }}{%- endif %}"""


@dataclass(frozen=True)
class Family:
    name: str
    architecture: str  # transformers class
    template: str
    special: tuple[str, ...]  # added special tokens
    bos: str | None
    eos: str
    eot: str  # what the template writes after an assistant's content
    system_role: bool
    tool_role: bool
    tools: bool
    config: dict = field(default_factory=dict)


FAMILIES = {
    f.name: f
    for f in [
        Family(
            "llama3",
            "LlamaForCausalLM",
            LLAMA3,
            ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            "<|begin_of_text|>",
            "<|eot_id|>",
            "<|eot_id|>",
            True,
            True,
            True,
        ),
        Family(
            "qwen2.5",
            "Qwen2ForCausalLM",
            QWEN25,
            ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
            None,
            "<|im_end|>",
            "<|im_end|>",
            True,
            True,
            True,
        ),
        Family(
            "qwen3",
            "Qwen3ForCausalLM",
            QWEN3,
            ("<|im_start|>", "<|im_end|>", "<think>", "</think>"),
            None,
            "<|im_end|>",
            "<|im_end|>",
            True,
            True,
            True,
            {"head_dim": 16},
        ),
        Family(
            "mistral",
            "MistralForCausalLM",
            MISTRAL,
            ("<s>", "</s>", "[INST]", "[/INST]"),
            "<s>",
            "</s>",
            "</s>",
            True,
            False,
            False,
        ),
        Family(
            "gemma2",
            "Gemma2ForCausalLM",
            GEMMA2,
            ("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"),
            "<bos>",
            "<eos>",
            "<end_of_turn>",
            False,
            False,
            False,
            {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8},
        ),
        Family(
            "gemma3",
            "Gemma3ForCausalLM",
            GEMMA3,
            ("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"),
            "<bos>",
            "<eos>",
            "<end_of_turn>",
            True,
            False,
            False,
            {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8},
        ),
        Family(
            "phi3",
            "Phi3ForCausalLM",
            PHI3,
            ("<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
            None,
            "<|endoftext|>",
            "<|end|>",
            True,
            False,
            False,
        ),
        Family(
            "phi4",
            "Phi3ForCausalLM",
            PHI4,
            ("<|im_start|>", "<|im_sep|>", "<|im_end|>"),
            None,
            "<|im_end|>",
            "<|im_end|>",
            True,
            True,
            False,
        ),
    ]
}


def build_family_tokenizer(family: Family, smol_path: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_path)
    tok.add_special_tokens({"additional_special_tokens": list(family.special)})
    tok.eos_token = family.eos
    tok.bos_token = family.bos
    tok.chat_template = family.template
    return tok


def build_family_model(family: Family, out: Path, smol_path: Path, hidden: int = 64, layers: int = 2) -> Path:
    """A random model of the family's architecture on its tokenizer, saved as an HF folder."""
    import torch
    import transformers

    if (out / "config.json").exists():
        return out
    tok = build_family_tokenizer(family, smol_path)
    cls = getattr(transformers, family.architecture)
    config = cls.config_class(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        **family.config,
    )
    torch.manual_seed(0)
    model = cls(config)
    model.generation_config.eos_token_id = tok.eos_token_id  # the eot is found from the template, not here
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
