"""evaluation.benchmarks.bench_vs_port without the port: it skips cleanly (writing nothing), and
its hope_hf side reads a pilot config the way the port's Hydra defaults compose it and builds the
matched shape."""

import argparse
from pathlib import Path

import pytest

from evaluation.lib import results as results_lib


@pytest.fixture(scope="module")
def bench():
    from evaluation.benchmarks import bench_vs_port

    return bench_vs_port


PILOT = """
model:
  vocab_size: 32000
  dim: 512
  num_layers: 12
  heads: 8
  titan_level: {name: titan, update_period: 8}
  cms_levels:
    - {name: fast, update_period: 1}
    - {name: slow, update_period: 16}
train:
  online_updates: false
  steps: 10
"""

VARIANT = """
defaults:
  - /pilot
  - _self_
model:
  block_variant: hope_selfmod
  self_mod_chunk_size_memory: 32
train:
  online_updates: true
"""


def fake_port_configs(root: Path) -> Path:
    (root / "configs" / "hope").mkdir(parents=True)
    (root / "configs" / "pilot.yaml").write_text(PILOT)
    (root / "configs" / "hope" / "pilot_selfmod.yaml").write_text(VARIANT)
    return root


@pytest.mark.parametrize("port_args", [[], ["--port-path", "{tmp}"]], ids=["no-path", "path-without-port"])
def test_skips_without_the_port(bench, tmp_path, capsys, port_args, monkeypatch):
    fake_port_configs(tmp_path)  # configs alone are not the port: its model code is missing
    monkeypatch.chdir(tmp_path)
    committed = results_lib.COMMITTED / "bench_vs_port.json"
    before = committed.read_bytes() if committed.exists() else None
    args = [a.format(tmp=tmp_path) for a in port_args] + ["--output", str(tmp_path / "results" / "bench_vs_port.json")]
    assert bench.main(args) is None
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()
    assert bench.main([a.format(tmp=tmp_path) for a in port_args]) is None  # the default path: outputs/
    assert not (tmp_path / "outputs").exists()
    assert (committed.read_bytes() if committed.exists() else None) == before


def test_variant_keys_override_the_pilot(bench, tmp_path):
    config = bench.read_port_config(fake_port_configs(tmp_path), "pilot_selfmod")
    assert "defaults" not in config
    assert config["model"]["dim"] == 512 and config["model"]["block_variant"] == "hope_selfmod"
    assert config["model"]["self_mod_chunk_size_memory"] == 32
    assert config["train"] == {"online_updates": True, "steps": 10}


def test_hope_side_has_the_ports_shape(bench, tmp_path):
    from hope_hf import HopeForCausalLM

    config = bench.read_port_config(fake_port_configs(tmp_path), "pilot_selfmod")
    args = argparse.Namespace(pilot_size=False, dim=32, layers=2, heads=4, vocab_size=64)
    section = bench.resize(config["model"], args)
    model = HopeForCausalLM(bench.hope_config_like(section, "titans", max_len=128))
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.vocab_size) == (32, 2, 4, 64)
    assert c.titans_chunk_size == 32 and c.tie_word_embeddings
    assert [level["update_period"] for level in c.cms_levels] == [1, 16]
    # each CMS level holds as many weights as the port's dim -> 4 dim -> dim GELU MLP
    level = model.model.layers[0].cms.levels[0]
    level_weights = sum(p.numel() for p in level.parameters())
    assert abs(level_weights - 2 * 32 * 4 * 32) / (2 * 32 * 4 * 32) < 0.01
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    full = bench.resize(config["model"], argparse.Namespace(pilot_size=True))
    assert (full["dim"], full["num_layers"], full["heads"], full["vocab_size"]) == (512, 12, 8, 32000)


def test_one_token_chunk_is_skipped(bench):
    """A one-token chunk has no next-token target (its mean loss would be NaN); the port's loop skips it."""
    import torch

    class NeverCalled:
        def forward_with_block_outputs(self, *args, **kwargs):
            raise AssertionError("a one-token chunk reached the model")

        __call__ = forward_with_block_outputs

    bench.port_chunk_update(NeverCalled(), torch.zeros(1, 1, dtype=torch.long), outer_backward=True)
    with pytest.raises(AssertionError):
        bench.port_chunk_update(NeverCalled(), torch.zeros(1, 2, dtype=torch.long))
