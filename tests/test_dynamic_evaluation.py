"""Dynamic evaluation (Krause et al.): the baseline of test-time learning, read with InContextLearner's loop."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hope_hf import InContextLearner, LlamaCMSForCausalLM
from hope_hf.test_time import DynamicEvaluation, gradient_statistics, parameter_names

from helpers import random_ids, tiny_model


def tied_llama_cms():
    config = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True, eos_token_id=None, bos_token_id=1)
    torch.manual_seed(0)
    return LlamaCMSForCausalLM.from_llama(LlamaForCausalLM(config), cms_levels=[
        {"name": "fast", "intermediate_size": 16, "update_period": 1}], warm_start=True)


MODELS = {"titans": lambda: tiny_model(mixer="titans"), "hybrid": lambda: tiny_model(mixer=["titans", "attention"]),
          "llama_cms": tied_llama_cms}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("which", ["all", "mlp"])
def test_zero_rate_reads_exactly_like_plain_reading_and_leaves_the_model(name, which):
    model = MODELS[name]()
    ids = random_ids(1, 45)
    statistics = gradient_statistics(model, random_ids(3, 12), parameter_names(model, which))
    before = {n: p.clone() for n, p in model.named_parameters()}
    plain = InContextLearner(model, lr=0.0, segment_size=8).read(ids)[0]
    still = DynamicEvaluation(model, statistics, lr=0.0, segment_size=8).read(ids)[0]
    moving = DynamicEvaluation(model, statistics, lr=1e-3, decay=0.1, segment_size=8).read(ids)[0]
    assert still.segment_losses == pytest.approx(plain.segment_losses, abs=1e-6)
    assert moving.segment_losses[0] == pytest.approx(plain.segment_losses[0], abs=1e-6)  # read before any step
    assert moving.segment_losses[1:] != pytest.approx(plain.segment_losses[1:], abs=1e-6)
    assert set(moving.fast_weights) == set(statistics)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_parameter_sets():
    hope, llama = tiny_model(mixer="titans"), tied_llama_cms()
    assert set(parameter_names(hope, "all")) == {n for n, _ in hope.named_parameters()}
    assert parameter_names(hope, "mlp") and all(".cms." in n for n in parameter_names(hope, "mlp"))
    assert {n for n in parameter_names(hope, "all") if ".cms." in n} == set(parameter_names(hope, "mlp"))
    assert parameter_names(llama, "mlp") and all(".mlp." in n for n in parameter_names(llama, "mlp"))
    assert "model.embed_tokens.weight" in parameter_names(llama, "all")  # tied to lm_head: one name
    with pytest.raises(ValueError, match=r"which must be one of \('all', 'mlp'\)"):
        parameter_names(hope, "attention")


def test_gradient_statistics_are_the_rms_of_each_batch_gradient():
    model = tiny_model(mixer="titans").double()
    blocks = random_ids(5, 10)
    names = parameter_names(model, "mlp")
    statistics = gradient_statistics(model, blocks, names, batch_size=2)  # batches of 2, 2 and 1 blocks
    squares = {n: 0 for n in names}
    for batch in (blocks[:2], blocks[2:4], blocks[4:]):
        model.zero_grad()
        model(batch, labels=batch).loss.backward()
        for n, p in model.named_parameters():
            if n in squares:
                squares[n] = squares[n] + p.grad ** 2
    for n in names:
        torch.testing.assert_close(statistics[n], (squares[n] / 3).sqrt(), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="not parameters"):
        gradient_statistics(model, blocks, ["no.such.weight"])


def test_first_step_is_krause_rule_on_the_first_segments_gradient():
    """After one segment, theta_1 = theta_0 - lr * g / (rms + eps) (the pull back acts on theta - theta_0 = 0);
    the ninth token's segment has no next-token pair, so its step is the pull back alone:
    theta_2 = theta_1 + decay * rate * (theta_0 - theta_1)."""
    model = tiny_model(mixer="titans").double()
    ids, lr = random_ids(1, 12), 1e-3
    names = parameter_names(model, "mlp")
    statistics = gradient_statistics(model, random_ids(4, 10), names)
    reader = DynamicEvaluation(model, statistics, lr=lr, decay=0.3, segment_size=8)
    state = reader.read(ids[:, :9])[0]
    loss = torch.nn.functional.cross_entropy(model(ids[:, :8]).logits[0], ids[0, 1:9])
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    for n, g in zip(names, grads):
        first_step = lr * g / (statistics[n] + 2e-5)
        expected = params[n].detach() - first_step * (1 - 0.3 * reader.decay_rates[n])
        assert first_step.abs().max() > 1e-4  # a step that shows
        torch.testing.assert_close(state.fast_weights[n], expected, atol=1e-12, rtol=1e-9)


def test_decay_rates_follow_the_published_definition():
    """rate = rms / (mean over tensors of mean(rms)), clipped at 1 / decay; the step pulls theta toward theta_0 by decay * rate."""
    model = tiny_model(mixer="titans")
    statistics = {n: torch.rand_like(p) * 10 ** torch.randint(-3, 1, ()).item() for n, p in model.named_parameters()
                  if ".cms." in n}
    reader = DynamicEvaluation(model, statistics, lr=0.0, decay=0.5)
    scale = sum(rms.mean() for rms in statistics.values()) / len(statistics)
    clipped = 0
    for n, rms in statistics.items():
        expected = torch.minimum(rms / scale, torch.tensor(2.0))
        clipped += int((rms / scale > 2.0).sum())
        torch.testing.assert_close(reader.decay_rates[n], expected)
    assert clipped > 0  # some rate met the clip
    # a weight moved away from theta_0 is pulled back by decay * rate of the gap (lr 0: no gradient step)
    ids = random_ids(1, 17)
    name = next(iter(statistics))
    shifted = {n: p.detach().clone() for n, p in model.named_parameters()}
    offset = torch.randn_like(shifted[name])

    class Batch:
        fast_weights = {name: (shifted[name] + offset)[None]}

    step = reader._steps(reader.levels[0], {name: torch.zeros_like(offset)[None]}, Batch)[name]
    torch.testing.assert_close(step[0], 0.5 * reader.decay_rates[name] * offset)
    assert DynamicEvaluation(model, statistics, lr=1e-3, segment_size=8).read(ids)[0].updates == {"dynamic evaluation": 3}


def test_bad_inputs_are_refused_by_name():
    model = tiny_model(mixer="titans")
    statistics = gradient_statistics(model, random_ids(2, 10), parameter_names(model, "all"))
    with pytest.raises(ValueError, match="statistics must name"):
        DynamicEvaluation(model, {}, lr=1e-3)
    with pytest.raises(ValueError, match="not parameters of"):
        DynamicEvaluation(model, {"no.such.weight": torch.ones(1)}, lr=1e-3)
    with pytest.raises(ValueError, match="decay must be in"):
        DynamicEvaluation(model, statistics, lr=1e-3, decay=1.0)
    with pytest.raises(ValueError, match="blocks must be a non-empty"):
        gradient_statistics(model, random_ids(1, 10)[0], ["lm_head.weight"])
    with pytest.raises(ValueError, match="not of an nn.Linear layer, so it is read one row at a time"):
        DynamicEvaluation(model, statistics, lr=1e-3, segment_size=8).read(random_ids(2, 20))


def test_cms_rule_rms_is_dynamic_evaluation_of_the_levels_without_its_decay():
    """InContextLearner(rule="rms") steps each CMS level by lr * g / (rms + 2e-5): with every level
    stepping after every segment it reads exactly as DynamicEvaluation of the levels' weights at decay 0."""
    model = tiny_model(mixer=["titans", "attention"], cms_levels=[{"intermediate_size": 48, "update_period": 1},
                                                                  {"intermediate_size": 32, "update_period": 1}])
    ids = random_ids(1, 40)
    levels = [n for n in parameter_names(model, "mlp") if ".levels." in n]
    statistics = gradient_statistics(model, random_ids(3, 12), levels)
    cms = InContextLearner(model, rule="rms", lr=3e-3, segment_size=8, statistics=statistics).read(ids)[0]
    dynamic = DynamicEvaluation(model, statistics, lr=3e-3, segment_size=8).read(ids)[0]
    plain = InContextLearner(model, lr=0.0, segment_size=8).read(ids)[0]
    assert cms.segment_losses == pytest.approx(dynamic.segment_losses, abs=1e-6)
    assert cms.segment_losses[1:] != pytest.approx(plain.segment_losses[1:], abs=1e-4)
    for name in levels:
        torch.testing.assert_close(cms.fast_weights[name], dynamic.fast_weights[name], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="statistics lacks"):
        InContextLearner(model, rule="rms", lr=1e-3, statistics={levels[0]: statistics[levels[0]]})
    with pytest.raises(ValueError, match="rule 'rms' needs statistics="):
        InContextLearner(model, rule="rms", lr=1e-3)
