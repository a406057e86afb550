"""The test-time learning rule a model carries (config.test_time_learning), and its calibration."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from hope_hf import HopeConfig, InContextLearner, LlamaCMSConfig, LlamaCMSForCausalLM
from hope_hf.data import sample_text_path
from hope_hf.modeling.modeling_llama_cms import PRETRAINED_TEST_TIME_RULE
from hope_hf.test_time import BUILT_IN_RULE, parameter_names
from hope_hf.test_time.in_context import STATISTICS_FILE
from hope_hf.test_time.calibration import calibrate, compare_with_plain, save_entry
from hope_hf.training import train_bpe_tokenizer

from helpers import random_ids, tiny_config, tiny_model

RULE = {"rule": "adam", "lr": [1e-3, 0.0], "segment_size": 8, "periods": [1, None], "max_grad_norm": 0.5, "decay": 0.1}
EVERY_SEGMENT = [{"intermediate_size": 48, "update_period": 1}, {"intermediate_size": 32, "update_period": 1}]


def test_a_saved_rule_is_reloaded_and_read_with_when_no_option_is_given(tmp_path):
    model = tiny_model(mixer="titans", test_time_learning=RULE)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.test_time_learning == RULE
    assert json.loads((tmp_path / "config.json").read_text())["test_time_learning"] == RULE
    learner = InContextLearner(reloaded)
    assert learner.options == RULE
    ids = random_ids(1, 30)
    implied, explicit = learner.read(ids)[0], InContextLearner(tiny_model(mixer="titans"), **RULE)
    explicit.model.load_state_dict(reloaded.state_dict())
    assert implied.segment_losses == pytest.approx(explicit.read(ids)[0].segment_losses, abs=1e-6)
    assert implied.segment_losses[1:] != pytest.approx(InContextLearner(reloaded, lr=0.0).read(ids)[0].segment_losses[1:])
    # an option given overrides the config's, the others still come from it
    assert InContextLearner(reloaded, lr=0.0, segment_size=16).options == {**RULE, "lr": 0.0, "segment_size": 16}


def test_a_model_without_the_entry_reads_with_the_built_in_rule():
    model = tiny_model(mixer="titans")
    assert model.config.test_time_learning is None
    learner = InContextLearner(model)
    assert learner.options == BUILT_IN_RULE == {"rule": "sgd", "lr": 1e-2, "segment_size": 64, "periods": None,
                                                "max_grad_norm": None, "decay": 0.0}
    ids = random_ids(1, 150)
    explicit = InContextLearner(model, lr=1e-2, rule="sgd", segment_size=64, periods=None, max_grad_norm=None, decay=0.0)
    assert learner.read(ids)[0].segment_losses == explicit.read(ids)[0].segment_losses


@pytest.mark.parametrize("entry, message", [
    ({"lr": 1e-3}, "must be None or a dict with the keys 'rule' and 'lr'"),
    ({"rule": "sgd", "lr": 1e-3, "momentum": 0.9}, "must be None or a dict with the keys 'rule' and 'lr'"),
    ({"rule": "rmsprop", "lr": 1e-3}, r"`test_time_learning\['rule'\]` must be one of \('sgd', 'adam', 'rms'\)"),
    ({"rule": "sgd", "lr": -1.0}, r"`test_time_learning\['lr'\]` must be a number >= 0 or a list of 2"),
    ({"rule": "sgd", "lr": [1e-3, 1e-3, 1e-3]}, r"`test_time_learning\['lr'\]`"),
    ({"rule": "sgd", "lr": 1e-3, "segment_size": 1}, r"`test_time_learning\['segment_size'\]` must be an int >= 2"),
    ({"rule": "sgd", "lr": 1e-3, "periods": [1]}, r"`test_time_learning\['periods'\]` must be None or a list of 2"),
    ({"rule": "sgd", "lr": 1e-3, "periods": [1, 0]}, r"`test_time_learning\['periods'\]`"),
    ({"rule": "sgd", "lr": 1e-3, "max_grad_norm": 0}, r"`test_time_learning\['max_grad_norm'\]` must be None or a number > 0"),
    ({"rule": "sgd", "lr": 1e-3, "decay": 1.0}, r"`test_time_learning\['decay'\]` must be a number in \[0, 1\)"),
])
def test_a_bad_entry_is_refused_at_construction_by_name(entry, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(test_time_learning=entry)
    with pytest.raises(ValueError, match=message):
        LlamaCMSConfig(vocab_size=11, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                       cms_levels=[{"intermediate_size": 16, "update_period": 1}, {"intermediate_size": 4, "update_period": 1}],
                       test_time_learning=entry)


def small_llama():
    config = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         eos_token_id=None, bos_token_id=1)
    return LlamaForCausalLM(config)


def test_a_retrofit_starts_with_the_rule_measured_on_pretrained_weights(tmp_path):
    levels = [{"name": "slow", "intermediate_size": 8, "update_period": 4}, {"name": "fast", "intermediate_size": 8, "update_period": 1}]
    model = LlamaCMSForCausalLM.from_llama(small_llama(), cms_levels=levels)
    assert model.config.test_time_learning == {**PRETRAINED_TEST_TIME_RULE, "periods": [None, 4, 1]}
    learner = InContextLearner(model)
    assert learner.rule == "adam" and learner.max_grad_norm == 1.0
    assert [level.period for level in learner.levels] == [None, 4, 1]  # the pretrained MLP is frozen
    model.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.test_time_learning == model.config.test_time_learning
    bare = LlamaCMSForCausalLM.from_llama(small_llama(), cms_levels=levels, test_time_learning=None)
    assert bare.config.test_time_learning is None and InContextLearner(bare).options == BUILT_IN_RULE


def test_calibration_picks_the_rule_that_helps_and_refuses_a_harmful_one(tmp_path):
    """A passage read twice: Adam at 1e-2 lowers the second reading (by 4.6% with seed 0) and at 3e-3
    less; at 0.1 it makes a first-half segment worse by over 1%. Calibration takes 1e-2; with only
    the harmful rule, plain reading (lr 0)."""
    torch.manual_seed(0)
    model = tiny_model(mixer="titans", cms_levels=EVERY_SEGMENT)
    passage = random_ids(1, 48)
    documents = [torch.cat([passage, passage], dim=1)[0], torch.cat([passage[:, :40]] * 2, dim=1)[0]]
    helpful, harmful = dict(rule="adam", lr=1e-2, segment_size=8), dict(rule="adam", lr=0.1, segment_size=8)
    chosen, table = calibrate(model, documents, [harmful, dict(rule="adam", lr=3e-3, segment_size=8), helpful])
    assert chosen == {**BUILT_IN_RULE, **helpful} == model.config.test_time_learning
    rows = {row["entry"]["lr"]: row for row in table}
    assert rows[1e-2]["harmless"] and rows[1e-2]["mean_second_half_vs_plain"] < rows[3e-3]["mean_second_half_vs_plain"] < 0
    assert not rows[0.1]["harmless"] and max(d["worst_first_half_segment_vs_plain"] for d in rows[0.1]["documents"]) > 0.01
    plain = InContextLearner(model, lr=0.0, segment_size=8).read(documents[0][None])[0].segment_losses
    learned = InContextLearner(model).read(documents[0][None])[0].segment_losses  # now the model's own rule
    assert rows[1e-2]["documents"][0] == pytest.approx(compare_with_plain(learned, plain))
    chosen, _ = calibrate(model, documents, [harmful], set_config=False)
    assert chosen["lr"] == 0.0 and model.config.test_time_learning["lr"] == 1e-2
    model.save_pretrained(tmp_path)
    save_entry(tmp_path, chosen)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.test_time_learning == chosen
    with pytest.raises(ValueError, match="at least two segments of 8 tokens"):
        calibrate(model, [passage[0, :12]], [helpful])


def test_calibration_command_writes_the_rule_into_a_saved_model(tmp_path):
    lines = sample_text_path().read_text().splitlines()
    tokenizer = train_bpe_tokenizer(lines[:100], 300)
    config = HopeConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        titans_chunk_size=8, cms_levels=EVERY_SEGMENT)
    HopeForCausalLM = AutoModelForCausalLM.from_config(config).__class__
    HopeForCausalLM(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "a.txt").write_text("\n".join(lines[:60]) + "\n")
    result = subprocess.run([sys.executable, "-m", "hope_hf.training.calibration", str(tmp_path / "model"),
                             "--domains", str(tmp_path / "a.txt"), "code", "--tokens", "300"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "model" / "test_time_calibration.json").read_text())
    assert report["validation_tokens"] == {str(tmp_path / "a.txt"): 300, "code": 300}
    assert len(report["candidates"]) == 9 and all(len(row["documents"]) == 2 for row in report["candidates"])
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert saved.config.test_time_learning == report["chosen"] and report["chosen"]["segment_size"] == 128
    # the statistics of rule "rms" lie beside the weights whatever was chosen, and the reloaded model reads with them
    statistics = load_file(tmp_path / "model" / STATISTICS_FILE)
    assert set(statistics) == set(parameter_names(saved, "mlp"))
    rms = InContextLearner(saved, rule="rms", lr=1e-3)
    assert all(torch.equal(rms.statistics[name], statistics[name]) for name in statistics)
    bad = subprocess.run([sys.executable, "-m", "hope_hf.training.calibration", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "holds no config.json" in bad.stderr
