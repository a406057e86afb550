"""Bad input at every public entry point gets an error that names the argument, what was given
and what is allowed (docs/reliability.md): one row per bad input."""

import pytest
import torch

from hope_hf import HopeConfig, InContextLearner
from hope_hf.modeling.modeling_hope import HopeCache
from hope_hf.ops import chunk_self_referential_gated_delta_rule
from hope_hf.optim.cms_schedule import CMSSchedule
from hope_hf.training.trainer import TrainingConfig
from transformers import DynamicCache

from helpers import random_ids, tiny_config, tiny_model

MODEL = tiny_model(mixer=["titans", "attention"])
IDS = random_ids(2, 10)


def forward(**inputs):
    return lambda: MODEL(**inputs)


def with_cache(ids, mask):
    """A second forward after 10 cached tokens, with ``mask``."""
    def call():
        cache = MODEL(IDS, use_cache=True).past_key_values
        MODEL(ids, attention_mask=mask, past_key_values=cache)
    return call


def op(**overrides):
    B, T, H, D = 1, 9, 2, 4
    inputs = dict(u=torch.randn(B, T, H, D), q=torch.randn(B, T, H, D), initial_state=torch.randn(B, H, D, 3 * D + 2),
                  b_eta=torch.zeros(H), b_alpha=torch.zeros(H), chunk_size=4)
    inputs.update(overrides)
    return lambda: chunk_self_referential_gated_delta_rule(**inputs)


def config(**fields):
    return lambda: tiny_config(**fields)


def learner(**options):
    return lambda: InContextLearner(MODEL, **options)


def training(**fields):
    return lambda: TrainingConfig(output_dir="unused", **fields)


BAD_INPUTS = {
    # model forward
    "empty sequence": (forward(input_ids=IDS[:, :0]), "input_ids must hold at least one token"),
    "3-D input_ids": (forward(input_ids=IDS[None]), r"input_ids must be an integer tensor of shape \(batch, seq_len\)"),
    "1-D input_ids": (forward(input_ids=IDS[0]), r"input_ids must be an integer tensor of shape \(batch, seq_len\), got torch.int64 of shape \(10,\)"),
    "float input_ids": (forward(input_ids=IDS.float()), "input_ids must be an integer tensor"),
    "id past the vocabulary": (forward(input_ids=torch.full((1, 4), 101)), r"input_ids must hold token ids in \[0, vocab_size=101\), got 101"),
    "negative id": (forward(input_ids=torch.tensor([[3, -1, 4]])), r"input_ids must hold token ids in \[0, vocab_size=101\), got -1"),
    "mask shorter than the input": (forward(input_ids=IDS, attention_mask=torch.ones(2, 7)), r"attention_mask must have shape \(batch, past \+ seq_len\) = \(2, 10\) \(0 tokens in the cache\), got \(2, 7\)"),
    "mask of another batch": (forward(input_ids=IDS, attention_mask=torch.ones(3, 10)), r"attention_mask must have shape .* = \(2, 10\)"),
    "mask without the cached tokens": (with_cache(IDS[:, :3], torch.ones(2, 3)), r"= \(2, 13\) \(10 tokens in the cache\), got \(2, 3\)"),
    "ids and embeddings": (forward(input_ids=IDS, inputs_embeds=torch.randn(2, 10, 32)), "exactly one of input_ids or inputs_embeds"),
    "embeddings of another width": (forward(inputs_embeds=torch.randn(2, 10, 16)), r"inputs_embeds must have shape \(batch, seq_len, hidden_size=32\), got \(2, 10, 16\)"),
    "labels of another shape": (forward(input_ids=IDS, labels=IDS[:, :5]), r"labels must have the shape of input_ids \(2, 10\), got \(2, 5\)"),
    "label past the vocabulary": (forward(input_ids=IDS, labels=torch.full((2, 10), 500)), r"labels must hold token ids in \[0, vocab_size=101\) or -100, got 500"),
    "cache of another kind": (forward(input_ids=IDS, past_key_values=DynamicCache(), use_cache=True), "cache must be a HopeCache, got DynamicCache"),
    "generate: id past the vocabulary": (lambda: MODEL.generate(torch.full((1, 3), 200), max_new_tokens=2), "input_ids must hold token ids"),
    "generate: mask of another length": (lambda: MODEL.generate(IDS, attention_mask=torch.ones(2, 4), max_new_tokens=2), "attention_mask must have shape"),
    # configuration
    "unknown mixer": (config(mixer="mamba"), r"`mixer` must be one of \('titans', 'attention'\), got 'mamba'"),
    "chunk size 0": (config(titans_chunk_size=0), r"`titans_chunk_size` must be an int >= 1, got 0"),
    "heads that do not divide the width": (config(num_attention_heads=5), r"`num_attention_heads` \(5\) must divide `hidden_size` \(32\)"),
    "decay init out of (0, 1)": (config(titans_decay_init_min=1.5), r"`titans_decay_init_min` must be in \(0, 1\), got 1.5"),
    "CMS level without a period": (config(cms_levels=[{"intermediate_size": 8}]), r"`cms_levels\[0\]` must be a dict with the keys"),
    "unknown CMS variant": (config(cms_variant="parallel"), r"`cms_variant` must be one of \('sequential', 'independent', 'nested'\)"),
    "test-time rule unknown": (config(test_time_learning={"rule": "lion", "lr": 1e-3}), r"`test_time_learning\['rule'\]` must be one of"),
    "mixer list of the wrong length": (config(mixer=["titans"]), r"`mixer` as a list needs one entry per layer \(2\), got 1"),
    # InContextLearner
    "negative test-time rate": (learner(lr=-1.0), r"lr must be a number >= 0 or a list of them \(one per level index\), got -1.0"),
    "segment of one token": (learner(segment_size=1), "segment_size must be an int >= 2, got 1"),
    "unknown test-time rule": (learner(rule="lion"), r"rule must be one of \('sgd', 'adam', 'rms'\), got 'lion'"),
    "decay of 1": (learner(decay=1.0), r"decay must be in \[0, 1\), got 1.0"),
    "one beta": (learner(betas=(0.9,)), r"betas must be two numbers in \[0, 1\), got \(0.9,\)"),
    "rates for too many levels": (learner(lr=[0.1, 0.1, 0.1]), r"lr as a list needs one entry per level index \(2\), got 3"),
    "reading a 1-D input": (lambda: InContextLearner(MODEL).read(IDS[0]), r"input_ids must have shape \(batch, seq_len\), got \(10,\)"),
    "reading with a mask of another shape": (lambda: InContextLearner(MODEL).read(IDS, torch.ones(2, 9)), r"attention_mask must have the shape of input_ids \(2, 10\), got \(2, 9\)"),
    "rule rms without statistics": (learner(rule="rms", lr=1e-3), "rule 'rms' needs statistics="),
    # the op
    "op: 3-D u": (op(u=torch.randn(1, 9, 8), q=torch.randn(1, 9, 8)), r"u must have shape \(batch, seq_len, heads, head_dim\), got \(1, 9, 8\)"),
    "op: q of another shape": (op(q=torch.randn(1, 8, 2, 4)), r"q must have the shape of u \(1, 9, 2, 4\), got \(1, 8, 2, 4\)"),
    "op: integer inputs": (op(u=torch.ones(1, 9, 2, 4, dtype=torch.long), q=torch.ones(1, 9, 2, 4, dtype=torch.long)), "must be a floating-point tensor, got torch.int64"),
    "op: chunk size 0": (op(chunk_size=0), "chunk_size must be an int >= 1, got 0"),
    "op: state of another width": (op(initial_state=torch.randn(1, 2, 4, 5)), r"initial_state must have shape \(1, 2, 4, 14\)"),
    "op: one bias for two heads": (op(b_eta=torch.zeros(1)), r"b_eta must have shape \(2,\) \(one bias per head\), got \(1,\)"),
    "op: mask of another length": (op(attention_mask=torch.ones(1, 8)), r"attention_mask must have shape \(1, 9\), got \(1, 8\)"),
    # CMSSchedule
    "schedule: period 0": (lambda: CMSSchedule(MODEL, [1, 0]), "must be an int >= 1 or None"),
    "schedule: level that does not exist": (lambda: CMSSchedule(MODEL, {5: 1}), r"names level index 5, but the model's levels are 0..1"),
    # training configuration (the scripts' flags)
    "no training steps": (training(max_steps=0), "max_steps must be an int >= 1, got 0"),
    "unknown optimizer": (training(optimizer="sgd"), r"optimizer must be one of \('adamw', 'm3'\), got 'sgd'"),
    "negative learning rate": (training(learning_rate=-1e-3), "learning_rate must be >= 0, got -0.001"),
    "negative warmup": (training(warmup_steps=-1), "warmup_steps must be an int >= 0, got -1"),
    "clip at 0": (training(max_grad_norm=0.0), "max_grad_norm must be None or > 0, got 0.0"),
    "unknown precision": (training(mixed_precision="fp8"), r"mixed_precision must be one of \('no', 'bf16', 'fp16'\), got 'fp8'"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_refused_by_name(name):
    call, message = BAD_INPUTS[name]
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_there_are_at_least_thirty_bad_inputs():
    assert len(BAD_INPUTS) >= 30


def test_a_misspelt_config_field_is_named_with_the_field_it_resembles():
    with pytest.warns(UserWarning, match="unknown field 'titans_chunk_sise', kept but unused; did you mean 'titans_chunk_size'"):
        HopeConfig(titans_chunk_sise=32)


def test_good_inputs_still_pass():
    """The checks' boundaries: the last id of the vocabulary, ignored labels, a mask that covers the cache."""
    MODEL(torch.tensor([[0, 100]]), labels=torch.tensor([[-100, 100]]))
    cache = MODEL(IDS, use_cache=True).past_key_values
    assert isinstance(cache, HopeCache)
    MODEL(IDS[:, :3], attention_mask=torch.ones(2, 13), past_key_values=cache)
