"""The supported transformers range (setup.py: the oldest release to the newest 5.x): the renamed
cache argument, no deprecation warning from hope_hf's own calls, checkpoints across versions."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from packaging import version

from hope_hf.transformers_compat import CACHE_ARG, output_cache

from helpers import random_ids, tiny_model

ROOT = Path(__file__).resolve().parents[1]
OLDEST = re.search(r'"transformers>=([0-9.]+)', (ROOT / "setup.py").read_text()).group(1)
RENAMED = CACHE_ARG == "cache"  # transformers >= 5.24


def run_python(python: str, code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run([python, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_cache_name_matches_the_installed_release():
    fields = transformers.modeling_outputs.BaseModelOutputWithPast.__dataclass_fields__
    assert CACHE_ARG in fields
    assert RENAMED == (version.parse(transformers.__version__) >= version.parse("5.24"))


def test_past_key_values_is_still_accepted():
    """The old name gives the same cache as `cache=`; from 5.24 on it warns, as transformers' models do."""
    model = tiny_model(mixer=["titans", "attention"])
    ids = random_ids(2, 9)
    with torch.no_grad():
        cache = output_cache(model(ids[:, :5], use_cache=True))
        new_name = model(ids[:, 5:], cache=cache, use_cache=True).logits
        cache = output_cache(model(ids[:, :5], use_cache=True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old_name = model(ids[:, 5:], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(old_name, new_name, rtol=0, atol=0)
    deprecations = [w for w in caught if "past_key_values" in str(w.message) and "deprecated" in str(w.message)]
    assert len(deprecations) == (1 if RENAMED else 0), [str(w.message) for w in caught]


DEPRECATION_PROBE = r"""
import logging, sys, tempfile, warnings
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
import hope_hf
from hope_hf import InContextLearner, LlamaCMSForCausalLM
from hope_hf.transformers_compat import output_cache
from helpers import random_ids, tiny_model

messages = []
class Collect(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger("transformers").addHandler(Collect(level=logging.WARNING))
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    hope = tiny_model(mixer=["titans", "attention"])
    ids = random_ids(2, 9)
    hope(ids, labels=ids).loss.backward()
    with torch.no_grad():
        cache = output_cache(hope(ids[:, :5], use_cache=True))
        hope(ids[:, 5:], cache=cache, use_cache=True)
        hope(ids, output_hidden_states=True, return_dict=False)
    hope.generate(ids, max_new_tokens=4, do_sample=False)
    with tempfile.TemporaryDirectory() as folder:
        hope.save_pretrained(folder)
        AutoModelForCausalLM.from_pretrained(folder).generate(ids, max_new_tokens=2, do_sample=False)
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).generate(ids, max_new_tokens=2)
    llama = LlamaCMSForCausalLM.from_llama(LlamaForCausalLM(LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)), cms_levels=[{"name": "fast", "intermediate_size": 16, "update_period": 1}])
    llama.generate(ids, max_new_tokens=4, do_sample=False)
    learner = InContextLearner(hope, lr=0.1, segment_size=4)
    [state] = learner.read(ids[:1])
    learner.generate(state, ids[:1, :2], max_new_tokens=3, do_sample=False)
found = [str(w.message) for w in caught if "deprecat" in str(w.message).lower()]
found += [m for m in messages if "deprecat" in m.lower()]
print("\n".join(found))
"""


def test_no_deprecation_warning_from_our_calls():
    """A fresh process (transformers warns once per message) runs training, cached forwards,
    generate(), save/load (also as remote code), Llama-CMS and InContextLearner: no deprecation."""
    found = run_python(sys.executable, DEPRECATION_PROBE).strip()
    assert found == "", found


SAVE = r"""
import sys, torch
from helpers import random_ids, tiny_model
torch.manual_seed(0)
model = tiny_model(mixer=["titans", "attention"])
model.save_pretrained(sys.argv[1])
ids = random_ids(2, 9)
with torch.no_grad():
    logits = model(ids).logits
torch.save({"ids": ids, "logits": logits, "generated": model.generate(ids, max_new_tokens=5, do_sample=False)},
           sys.argv[1] + "/expected.pt")
"""

LOAD = r"""
import sys, torch
from transformers import AutoModelForCausalLM
import hope_hf
expected = torch.load(sys.argv[1] + "/expected.pt")
for remote in (False, True):
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=remote).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(expected["ids"]).logits, expected["logits"], rtol=0, atol=1e-6)
    assert torch.equal(model.generate(expected["ids"], max_new_tokens=5, do_sample=False), expected["generated"])
    outputs = model(expected["ids"], output_hidden_states=True, return_dict=False)
    assert isinstance(outputs, tuple) and len(outputs[-1]) == model.config.num_hidden_layers + 1
print("ok")
"""


def other_interpreter() -> str:
    """The interpreter of the other end of the supported range: .venv-oldest from the newest release."""
    python = ROOT / ".venv-oldest" / "bin" / "python"
    if transformers.__version__ == OLDEST:
        pytest.skip("this is the oldest-release leg; the newest leg runs the cross-version check")
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(".venv-oldest is missing: .ci/run creates it with `bash scripts/bootstrap.sh --oldest`")
        pytest.skip("no .venv-oldest: `bash scripts/bootstrap.sh --oldest` creates it")
    return str(python)


@pytest.mark.parametrize("direction", ["newest_to_oldest", "oldest_to_newest"])
def test_checkpoints_load_across_versions(direction, tmp_path):
    """Saved with one end of the range, loaded with the other (installed classes and remote code):
    the same logits and greedy tokens, and transformers' output conventions."""
    other = other_interpreter()
    saver, loader = (sys.executable, other) if direction == "newest_to_oldest" else (other, sys.executable)
    versions = run_python(other, "import transformers; print(transformers.__version__)").strip()
    assert versions == OLDEST
    run_python(saver, SAVE, str(tmp_path))
    assert run_python(loader, LOAD, str(tmp_path)).strip().endswith("ok")
