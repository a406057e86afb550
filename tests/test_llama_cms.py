"""Llama + CMS: retrofit that computes exactly what the Llama computed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from hope_hf import CMSSchedule, InContextLearner, LlamaCMSConfig, LlamaCMSForCausalLM
from hope_hf.data import smollm2_gguf_path

from test_save_load import BLOCK_HOPE_HF, run_python

ROOT = Path(__file__).resolve().parents[1]


def tiny_llama():
    config = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=None, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


def ids(batch=2, length=11):
    return torch.randint(2, 101, (batch, length))


@pytest.mark.parametrize("variant", ["sequential", "independent", "nested"])
@pytest.mark.parametrize("warm_start", [False, True])
def test_retrofit_computes_what_the_llama_computed(variant, warm_start):
    llama = tiny_llama()
    model = LlamaCMSForCausalLM.from_llama(llama, cms_variant=variant, warm_start=warm_start)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, llama(x).logits, atol=1e-5, rtol=0)
    assert len(model.config.cms_levels) == 3 and model.config.cms_levels[0]["name"] == "pretrained"
    if warm_start:
        level = model.model.layers[0].mlp.levels[0]
        assert torch.equal(level.gate_proj.weight, llama.model.layers[0].mlp.gate_proj.weight[: level.gate_proj.weight.shape[0]])


def test_llama_state_dict_loads_key_for_key():
    llama = tiny_llama()
    model = LlamaCMSForCausalLM.from_llama(llama)
    llama_keys, cms_keys = set(llama.state_dict()), set(model.state_dict())
    assert llama_keys <= cms_keys
    assert all(".mlp.levels." in k or ".mlp.norms." in k for k in cms_keys - llama_keys)
    for k, v in llama.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_save_reload_and_generate_match_the_source(tmp_path):
    llama = tiny_llama()
    model = LlamaCMSForCausalLM.from_llama(llama, cms_levels=[{"name": "fast", "intermediate_size": 8, "update_period": 1}])
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, LlamaCMSForCausalLM)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, llama(x).logits, atol=1e-5, rtol=0)
    prompt = ids(2, 5)
    assert torch.equal(reloaded.generate(prompt, max_new_tokens=8, do_sample=False),
                       llama.generate(prompt, max_new_tokens=8, do_sample=False))


def test_remote_code_checkpoint_loads_without_hope_hf(tmp_path):
    llama = tiny_llama()
    model = LlamaCMSForCausalLM.from_llama(llama)
    model.save_pretrained(tmp_path / "ckpt")
    x = ids()
    with torch.no_grad():
        torch.save({"ids": x, "logits": llama(x).logits}, tmp_path / "expected.pt")
    out = run_python(BLOCK_HOPE_HF + """
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("ckpt", trust_remote_code=True).eval()
expected = torch.load("expected.pt")
with torch.no_grad():
    print(type(model).__name__, (model(expected["ids"]).logits - expected["logits"]).abs().max().item() < 1e-5)
""", tmp_path)
    assert out.split() == ["LlamaCMSForCausalLM", "True"]


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, **{f"w{i}": i for i in range(2, 101)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>")


def test_retrofit_script_from_a_llama_directory(tmp_path):
    llama = tiny_llama()
    llama.save_pretrained(tmp_path / "llama")
    word_tokenizer().save_pretrained(tmp_path / "llama")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "retrofit_llama.py"), str(tmp_path / "llama"), "--output-dir",
         str(tmp_path / "out"), "--level", "fast:16:1", "--pretrained-period", "64"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line.split() for line in result.stdout.splitlines() if line.startswith(("0 ", "1 "))]
    assert table == [["0", "pretrained", "12,288", "64", "True"], ["1", "fast", "3,072", "1", "True"]]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, llama(x).logits, atol=1e-5, rtol=0)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "out")("w5 w7")["input_ids"] == [5, 7]
    assert (tmp_path / "out" / "generation_config.json").exists()


def test_cms_learning_rules_work_on_llama_cms():
    llama = tiny_llama()
    model = LlamaCMSForCausalLM.from_llama(llama)
    schedule = CMSSchedule(model)
    assert [level.period for level in schedule.levels[:3]] == [256, 16, 1]
    assert {n for n, _ in schedule.levels[0].params} == {f"model.layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    x = ids(2, 30)
    with torch.no_grad():
        full = model(x).logits
    states = InContextLearner(model, lr=0.0, segment_size=8).read(x)
    for row, state in enumerate(states):
        torch.testing.assert_close(state.logits, full[row], atol=1e-5, rtol=0)


def test_bad_inputs_raise_clear_errors(tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    gpt2.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="'gpt2'"):
        LlamaCMSForCausalLM.from_llama(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        LlamaCMSForCausalLM.from_llama(gpt2)
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        LlamaCMSForCausalLM.from_llama(tmp_path / "no-such-dir")
    llama = tiny_llama()
    with pytest.raises(ValueError, match=r"`cms_levels\[1\]\['intermediate_size'\]`"):
        LlamaCMSForCausalLM.from_llama(llama, cms_levels=[{"name": "fast", "intermediate_size": 0, "update_period": 1}])
    with pytest.raises(ValueError, match=r"`cms_levels\[2\]\['name'\]`"):
        LlamaCMSForCausalLM.from_llama(llama, cms_levels=[{"name": "fast", "intermediate_size": 8, "update_period": 1}] * 2)
    with pytest.raises(ValueError, match=r"`cms_levels\[0\]\['intermediate_size'\]`"):
        LlamaCMSConfig(intermediate_size=64, cms_levels=[{"intermediate_size": 32, "update_period": 1}])


def test_smollm2_gguf_retrofit_end_to_end(tmp_path):
    """The real SmolLM2-135M-Instruct: retrofit, same logits, save, reload, same greedy answer."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    source = LlamaForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = LlamaCMSForCausalLM.from_llama(source)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(prompt).logits[:, -1], source(prompt).logits[:, -1], atol=1e-4, rtol=0)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    answer = reloaded.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(answer, source.generate(prompt, max_new_tokens=8, do_sample=False))
    assert "Paris" in tokenizer.decode(answer[0, prompt.shape[1]:])
    saved_config = json.loads((tmp_path / "config.json").read_text())
    assert saved_config["model_type"] == "llama_cms"
    assert "quantization_config" not in saved_config  # else lm-eval's from_pretrained looks for the GGUF file
