"""safetensors checkpoints: reload through AutoModelForCausalLM in a fresh process, and through
stock transformers' remote code where hope_hf cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import CONFIGS, random_ids, tiny_model

BLOCK_HOPE_HF = """
import sys
class BlockHopeHF:
    def find_spec(self, name, path=None, target=None):
        if name == "hope_hf" or name.startswith("hope_hf."):
            raise ImportError("hope_hf is blocked in this process")
sys.meta_path.insert(0, BlockHopeHF())
try:
    import hope_hf
    raise SystemExit("hope_hf must not be importable here")
except ImportError:
    pass
"""


def run_python(code: str, cwd) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "hf_modules")}
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.fixture
def saved(tmp_path, request):
    model = tiny_model(**CONFIGS[request.param], tie_word_embeddings=True)
    ids = random_ids(2, 11)
    with torch.no_grad():
        logits = model(ids).logits
    model.save_pretrained(tmp_path / "ckpt")
    torch.save({"ids": ids, "logits": logits}, tmp_path / "expected.pt")
    return tmp_path


@pytest.mark.parametrize("saved", ["titans", "hybrid"], indirect=True)
def test_safetensors_reload_in_fresh_process_gives_identical_logits(saved):
    files = os.listdir(saved / "ckpt")
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    out = run_python(textwrap.dedent("""
        import torch, hope_hf
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("ckpt").eval()
        expected = torch.load("expected.pt")
        assert type(model).__name__ == "HopeForCausalLM", type(model)
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        with torch.no_grad():
            print(torch.equal(model(expected["ids"]).logits, expected["logits"]))
    """), saved)
    assert out.strip() == "True"


@pytest.mark.parametrize("saved", ["titans_value_input", "hybrid_sliding", "titans_deep"], indirect=True)
def test_checkpoint_loads_with_stock_transformers_without_hope_hf(saved):
    config = json.loads((saved / "ckpt" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hope.HopeForCausalLM"
    out = run_python(BLOCK_HOPE_HF + textwrap.dedent("""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("ckpt", trust_remote_code=True).eval()
        assert "hope_hf" not in type(model).__module__, type(model).__module__
        expected = torch.load("expected.pt")
        with torch.no_grad():
            print(torch.equal(model(expected["ids"]).logits, expected["logits"]))
        generated = model.generate(expected["ids"][:, :4], max_new_tokens=5, do_sample=False)
        print(tuple(generated.shape))
        model.save_pretrained("resaved")  # a remote-code model saves a loadable checkpoint too
        again = AutoModelForCausalLM.from_pretrained("resaved", trust_remote_code=True).eval()
        with torch.no_grad():
            print(torch.equal(again(expected["ids"]).logits, expected["logits"]))
    """), saved)
    assert out.split() == ["True", "(2,", "9)", "True"]
