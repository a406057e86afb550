"""M3: Newton-Schulz, the slow momentum's pulses, exact resume, the k=1 reduction, training."""

import copy

import pytest
import torch

from hope_hf import M3
from hope_hf.optim.m3 import newton_schulz

from helpers import random_ids, tiny_model, train_on_repeated_motif


@pytest.mark.parametrize("shape", [(16, 16), (24, 40), (40, 24)])
def test_newton_schulz_pushes_singular_values_towards_one(shape):
    u, _, v = torch.linalg.svd(torch.randn(*shape), full_matrices=False)
    # a Gaussian matrix's condition number has a heavy tail (a square one is near-singular now and
    # then), so the spectra are drawn: random within condition number 100, and evenly spread over it
    random = u @ torch.diag(torch.empty(min(shape)).uniform_(1e-2, 1.0)) @ v
    ill = u @ torch.diag(torch.logspace(0, -2, min(shape))) @ v
    for matrix in (random, ill):
        s = torch.linalg.svdvals(newton_schulz(matrix))
        assert s.min() > 0.5 and s.max() < 1.5, s
    very_ill = u @ torch.diag(torch.logspace(0, -4, min(shape))) @ v  # condition number 1e4: more steps
    s = torch.linalg.svdvals(newton_schulz(very_ill, steps=12))
    assert s.min() > 0.5 and s.max() < 1.5, s


def quadratic_problem():
    weight = torch.nn.Parameter(torch.randn(6, 5))
    targets = [torch.randn(6, 5) for _ in range(9)]
    return weight, targets


def test_slow_momentum_changes_only_at_multiples_of_f_by_decay_and_beta3_times_chunk_sum():
    weight, targets = quadratic_problem()
    optimizer = M3([weight], lr=0.01, slow_period=3, betas=(0.9, 0.99, 0.5), momentum_decay=0.8)
    chunk_sum, previous = torch.zeros(6, 5), torch.zeros(6, 5)
    for step, target in enumerate(targets, start=1):
        weight.grad = None
        ((weight - target) ** 2).sum().backward()
        chunk_sum += weight.grad
        optimizer.step()
        slow = optimizer.state[weight]["momentum_1"]
        if step % 3 == 0:
            torch.testing.assert_close(slow, 0.8 * previous + 0.5 * chunk_sum, atol=1e-6, rtol=0)
            previous, chunk_sum = slow.clone(), torch.zeros(6, 5)
        else:
            assert torch.equal(slow, previous)


def test_one_level_matches_the_documented_reduction():
    """k=1: theta -= lr * NS(M) / (sqrt(V) + eps), M = sum of beta_1 * g, V = sum of beta_2 * g^2."""
    weight, targets = quadratic_problem()
    expected = weight.detach().clone()
    optimizer = M3([weight], lr=0.05, levels=[{"period": 1, "beta": 0.9, "weight": 1.0}], betas=(0.9, 0.95, 0.0), eps=1e-8,
                   variance="sum")
    momentum, variance = torch.zeros(6, 5), torch.zeros(6, 5)
    for target in targets[:4]:
        weight.grad = None
        ((weight - target) ** 2).sum().backward()
        g = weight.grad.clone()
        momentum += 0.9 * g
        variance += 0.95 * g * g
        expected -= 0.05 * newton_schulz(momentum) / (variance.sqrt() + 1e-8)
        optimizer.step()
        torch.testing.assert_close(weight.detach(), expected, atol=1e-6, rtol=0)


def test_ema_variance_is_adams_bias_corrected_moving_average():
    """variance="ema": V = beta_2 V + (1 - beta_2) g^2, divided by 1 - beta_2^t before the square root."""
    weight, targets = quadratic_problem()
    expected = weight.detach().clone()
    optimizer = M3([weight], lr=0.05, levels=[{"period": 1, "beta": 0.9, "weight": 1.0}], betas=(0.9, 0.95, 0.0), eps=1e-8,
                   variance="ema")
    momentum, variance = torch.zeros(6, 5), torch.zeros(6, 5)
    for t, target in enumerate(targets[:4], start=1):
        weight.grad = None
        ((weight - target) ** 2).sum().backward()
        g = weight.grad.clone()
        momentum += 0.9 * g
        variance = 0.95 * variance + 0.05 * g * g
        expected -= 0.05 * newton_schulz(momentum) / ((variance / (1 - 0.95**t)).sqrt() + 1e-8)
        optimizer.step()
        torch.testing.assert_close(weight.detach(), expected, atol=1e-6, rtol=0)


def test_no_variance_is_muons_step_on_the_levels_momenta():
    """variance="none": theta -= lr * sum_l w_l NS(M_l), two levels (the slow one every 2 steps,
    with decaying momenta), no division by a second moment."""
    weight, targets = quadratic_problem()
    expected = weight.detach().clone()
    levels = [{"period": 1, "beta": 0.9, "weight": 1.0, "decay": 0.95},
              {"period": 2, "beta": 0.5, "weight": 0.5, "decay": 0.9}]
    optimizer = M3([weight], lr=0.05, levels=levels, variance="none")
    fast, slow, held, slow_out = torch.zeros(6, 5), torch.zeros(6, 5), torch.zeros(6, 5), torch.zeros(6, 5)
    for t, target in enumerate(targets[:5], start=1):
        weight.grad = None
        ((weight - target) ** 2).sum().backward()
        g = weight.grad.clone()
        fast = 0.95 * fast + 0.9 * g
        held += g
        if t % 2 == 0:
            slow, held = 0.9 * slow + 0.5 * held, torch.zeros(6, 5)
            slow_out = newton_schulz(slow)
        expected -= 0.05 * (newton_schulz(fast) + 0.5 * slow_out)
        optimizer.step()
        torch.testing.assert_close(weight.detach(), expected, atol=1e-6, rtol=0)


def test_resume_mid_chunk_is_bit_identical():
    model = tiny_model()
    optimizer = M3.from_model(model, lr=0.01, slow_period=4)

    def step(m, opt, i):
        ids = torch.randint(2, 101, (2, 9), generator=torch.Generator().manual_seed(i))
        m(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()

    for i in range(6):  # stops mid-chunk of the slow level (period 4)
        step(model, optimizer, i)
    resumed_model = copy.deepcopy(model)
    resumed = M3.from_model(resumed_model, lr=0.01, slow_period=4)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for i in range(6, 10):
        step(model, optimizer, i)
        step(resumed_model, resumed, i)
    for (n, a), b in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), n


def test_defaults_are_the_measured_best_setting():
    m3_group, adamw_group = M3.from_model(tiny_model()).param_groups
    assert (m3_group["lr"], m3_group["eps"], m3_group["variance"]) == (1e-6, 1e-5, "ema")
    assert [(lv["period"], lv["decay"]) for lv in m3_group["levels"]] == [(1, 0.95), (8, 0.95)]
    assert (adamw_group["lr"], adamw_group["eps"]) == (3e-3, 1e-5)  # the AdamW part shares eps


def test_loss_decreases_on_a_tiny_model_and_groups_are_split():
    model = tiny_model().train()
    optimizer = M3.from_model(model, lr=3e-3, adamw_lr=3e-3, variance="sum", momentum_decay=1.0, eps=1e-2)
    m3_group, adamw_group = optimizer.param_groups
    assert all(p.dim() == 2 for p in m3_group["params"]) and adamw_group["algorithm"] == "adamw"
    adamw_ids = {id(p) for p in adamw_group["params"]}
    assert id(model.model.embed_tokens.weight) in adamw_ids and id(model.lm_head.weight) in adamw_ids
    losses = train_on_repeated_motif(model, optimizer, steps=25)
    assert losses[-1] < 0.7 * losses[0]


def test_the_matrices_alone_learn_at_the_defaults():
    """The AdamW part frozen (adamw_lr=0): only M3's step on the hidden matrices can lower the loss
    (a step that does nothing leaves it unchanged)."""
    model = tiny_model().train()
    optimizer = M3.from_model(model, adamw_lr=0.0)
    matrices = [p.detach().clone() for p in optimizer.param_groups[0]["params"]]
    losses = train_on_repeated_motif(model, optimizer, steps=25)
    assert losses[-1] < losses[0] - 0.03, losses
    assert all(not torch.equal(p, before) for p, before in zip(optimizer.param_groups[0]["params"], matrices))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(slow_period=0), "slow_period"),
        (dict(momentum_decay=1.5), "momentum_decay"),
        (dict(lr=-1.0), "lr"),
        (dict(betas=(1.0, 0.9, 0.9)), "betas\\[0\\]"),
        (dict(betas=(0.9, -0.1, 0.9)), "betas\\[1\\]"),
        (dict(levels=[{"period": 0, "beta": 0.9, "weight": 1.0}]), "levels\\[0\\]\\['period'\\]"),
        (dict(variance="adam"), "variance must be one of \\('sum', 'ema', 'none'\\)"),
    ],
)
def test_bad_hyper_parameters_raise_value_error(kwargs, field):
    weight = torch.nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match=field):
        M3([weight], **kwargs)
    with pytest.raises(ValueError, match="2-D matrices only"):
        M3([torch.nn.Parameter(torch.randn(4))])


def test_bf16_parameters_and_lr_schedulers_scale_both_groups():
    model = tiny_model().to(torch.bfloat16)
    optimizer = M3.from_model(model, lr=2e-3, adamw_lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 5e-4]
    ids = random_ids(2, 9)
    before = {n: p.clone() for n, p in model.named_parameters()}
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
