import pytest

from tunegate.catalog import get_base_model, load_tokenizer, template_sha256
from tunegate.errors import NotFoundError


def test_default_model_converted_and_hashed(settings):
    info = get_base_model("smollm2-135m-instruct", settings)
    assert (info.path / "model.safetensors").exists()
    assert "<|im_start|>" in info.chat_template
    assert info.template_sha256 == template_sha256(load_tokenizer(info.path).chat_template)
    assert info.context_length == 8192


def test_registered_folder_and_unknown(settings):
    assert get_base_model("tiny", settings).path == settings.base_models["tiny"]
    with pytest.raises(NotFoundError) as e:
        get_base_model("nope", settings)
    assert e.value.code == "model_not_found" and e.value.param == "model"


def test_concurrent_conversion_is_safe(tmp_path):
    """Two processes converting at once leave one complete folder and no temp dirs."""
    import subprocess
    import sys

    code = (
        "from tunegate.catalog.registry import resolve_path; from tunegate.settings import Settings; "
        f"print(resolve_path('smollm2-135m-instruct', Settings(model_cache_dir=r'{tmp_path}', data_dir=r'{tmp_path}')))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".smollm2") and not p.name.endswith(".lock")]
    assert leftovers == []
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").exists()
