"""The vLLM engine without a GPU: the adapter checks it shares with the built-in engine (template hash,
LoRA rank) run everywhere; the mapping of our requests onto vLLM's real `SamplingParams` and
`LoRARequest`, and of vLLM's real output objects back onto ours, runs where the vLLM package imports
(its CUDA wheel installs on a CPU machine with --no-deps; generation itself needs a GPU: see
scripts/gpu-check.sh). Skipped with the reason otherwise."""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest

from tunegate.catalog import get_base_model
from tunegate.errors import InvalidRequestError, ServerError
from tunegate.serve.engine import GenerationRequest, SamplingParams, ServableModel
from tunegate.serve.vllm_engine import LoraIds, VLLMEngine, VLLMSettings, to_choice_outputs, to_vllm_sampling


def _vllm():
    try:
        import vllm.lora.request  # noqa: F401
        import vllm.outputs  # noqa: F401
        import vllm.sampling_params  # noqa: F401
    except Exception as exc:  # ImportError, or a dependency of vLLM missing
        pytest.skip(
            f"vLLM is not importable here ({type(exc).__name__}: {exc}); install tunegate[vllm] (CUDA wheel) "
            "to test the mapping against its real classes"
        )


@pytest.fixture(scope="module")
def base(tiny_model_path, tmp_path_factory):
    from tests.conftest import MODEL_CACHE
    from tunegate.settings import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("v"), model_cache_dir=MODEL_CACHE, base_models={"tiny": tiny_model_path}
    )
    return settings, get_base_model("tiny", settings)


def _adapter(path, base_info, rank, template_sha):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_info.path)
    get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"])).save_pretrained(
        path
    )
    (path / "meta.json").write_text(json.dumps({"template_sha256": template_sha, "base_model": "tiny"}))
    return path


def test_check_model_refuses_other_templates_and_ranks_above_the_limit(base, tmp_path):
    settings, info = base
    engine = VLLMEngine(settings, VLLMSettings(max_lora_rank=8))
    engine.check_model(ServableModel("tiny", info))
    ok = _adapter(tmp_path / "ok", info, 8, info.template_sha256)
    engine.check_model(ServableModel("ft:ok", info, ok))
    with pytest.raises(InvalidRequestError) as e:
        engine.check_model(ServableModel("ft:big", info, _adapter(tmp_path / "big", info, 16, info.template_sha256)))
    assert e.value.code == "adapter_rank_too_large" and "TUNEGATE_VLLM_MAX_LORA_RANK" in e.value.message
    with pytest.raises(Exception) as e:
        engine.check_model(ServableModel("ft:old", info, _adapter(tmp_path / "old", info, 8, "0" * 64)))
    assert e.value.code == "template_mismatch"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_start_without_vllm_names_the_install(base):
    settings, _ = base
    with pytest.raises(ServerError) as e:
        asyncio.run(VLLMEngine(settings).start())
    assert e.value.code == "engine_unavailable" and "tunegate[vllm]" in e.value.message


def test_sampling_params_map_field_for_field():
    _vllm()
    from vllm.sampling_params import RequestOutputKind
    from vllm.sampling_params import SamplingParams as VSamplingParams

    ours = SamplingParams(
        max_tokens=7,
        temperature=0.7,
        top_p=0.9,
        stop=("\n\n", "END"),
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        logprobs=True,
        top_logprobs=3,
    )
    v = to_vllm_sampling(ours, n=2, stop_token_ids=[107])
    assert isinstance(v, VSamplingParams)
    assert (v.n, v.max_tokens, v.temperature, v.top_p, v.seed) == (2, 7, 0.7, 0.9, 42)
    assert v.stop == ["\n\n", "END"] and v.stop_token_ids == [107] and v.include_stop_str_in_output is False
    assert (v.presence_penalty, v.frequency_penalty, v.logprobs) == (0.5, -0.25, 3)
    assert v.output_kind == RequestOutputKind.DELTA and v.ignore_eos is False
    greedy = to_vllm_sampling(SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True), 1, [])
    assert greedy.temperature == 0.0 and greedy.logprobs is None and greedy.ignore_eos is True
    only_sampled = to_vllm_sampling(SamplingParams(max_tokens=1, logprobs=True, top_logprobs=0), 1, [])
    assert only_sampled.logprobs == 0  # OpenAI logprobs without top_logprobs: the sampled token's only


def test_lora_request_per_adapter_with_stable_ids(base, tmp_path):
    _vllm()
    from vllm.lora.request import LoRARequest

    _, info = base
    ids = LoraIds()
    assert ids.request(ServableModel("tiny", info)) is None
    a, b = tmp_path / "a", tmp_path / "b"
    ra = ids.request(ServableModel("ft:a", info, a))
    rb = ids.request(ServableModel("ft:b", info, b))
    assert isinstance(ra, LoRARequest) and (ra.lora_name, ra.lora_path) == ("ft:a", str(a.resolve()))
    assert ra.lora_int_id != rb.lora_int_id and ra.lora_int_id >= 1
    assert ids.request(ServableModel("ft:a", info, a)).lora_int_id == ra.lora_int_id


def test_vllm_outputs_become_choice_outputs(base):
    _vllm()
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    from tunegate.catalog import load_tokenizer
    from tunegate.serve.detok import TokenBytes

    tok = TokenBytes(load_tokenizer(base[1].path))
    hello, world, other = 19556, 905, 28
    outputs = [
        CompletionOutput(
            index=0,
            text=" world",
            token_ids=[world],
            cumulative_logprob=-0.5,
            logprobs=[{world: Logprob(-0.5, 1, " world"), other: Logprob(-1.5, 2, "=")}],
            finish_reason="stop",
            stop_reason=None,
        ),
        CompletionOutput(
            index=1,
            text="Hello",
            token_ids=[hello],
            cumulative_logprob=-2.0,
            logprobs=[
                {hello: Logprob(-2.0, 3, "Hello"), world: Logprob(-0.1, 1, " world"), other: Logprob(-0.9, 2, "=")}
            ],
            finish_reason=None,
        ),
    ]
    ro = RequestOutput(
        request_id="r", prompt=None, prompt_token_ids=[1, 2], prompt_logprobs=None, outputs=outputs, finished=False
    )
    first, second = to_choice_outputs(ro, tok, top_logprobs=2)
    assert (first.index, first.text, first.finish_reason, first.completion_tokens) == (0, " world", "stop", 1)
    assert first.logprobs[0].token == tok(world)[0] and first.logprobs[0].logprob == -0.5
    assert [t[2] for t in first.logprobs[0].top] == [-0.5, -1.5]
    assert second.finish_reason is None and second.logprobs[0].logprob == -2.0
    assert [t[0] for t in second.logprobs[0].top] == [tok(world)[0], tok(other)[0]]  # ranks 1, 2; sampled is 3rd
    aborted = RequestOutput(
        request_id="r",
        prompt=None,
        prompt_token_ids=[1],
        prompt_logprobs=None,
        finished=True,
        outputs=[CompletionOutput(0, "", [], None, None, finish_reason="abort")],
    )
    with pytest.raises(ServerError):
        to_choice_outputs(aborted, tok, 0)


def test_engine_args_carry_multi_lora_settings(base):
    _vllm()
    settings, info = base
    try:
        args = VLLMEngine(settings, VLLMSettings(max_loras=4, max_lora_rank=32)).engine_args(info)
    except Exception as exc:
        pytest.skip(f"vLLM's engine arguments do not import without its GPU dependencies ({exc})")
    assert args.enable_lora and args.max_loras == 4 and args.max_lora_rank == 32
    assert args.max_model_len == info.context_length and args.model == str(info.path)


def test_submit_is_lazy_and_bounded(base):
    settings, info = base
    engine = VLLMEngine(settings, VLLMSettings(max_num_seqs=1))
    req = GenerationRequest(ServableModel("tiny", info), [1, 2], SamplingParams(max_tokens=1))
    streams = [engine.submit(req) for _ in range(1 + settings.max_queue)]  # nothing runs until iterated
    from tunegate.errors import RateLimitError

    with pytest.raises(RateLimitError):
        engine.submit(req)
    asyncio.run(streams[0].aclose())
    engine.submit(req)


def test_constrained_requests_are_refused_not_served_unconstrained(base):
    settings, info = base
    engine = VLLMEngine(settings)
    req = GenerationRequest(
        ServableModel("tiny", info), [1, 2], SamplingParams(max_tokens=1), logits_processors=(lambda: None,)
    )
    with pytest.raises(InvalidRequestError) as e:
        engine.submit(req)
    assert e.value.code == "unsupported_parameter" and "TUNEGATE_ENGINE=transformers" in e.value.message


def test_tunegate_engine_vllm_chooses_this_engine(base, monkeypatch):
    from tunegate.plugins import ENGINES
    from tunegate.settings import Settings

    monkeypatch.setenv("TUNEGATE_ENGINE", "vllm")
    assert Settings().engine == "vllm" and ENGINES.get("vllm") is VLLMEngine
