"""CMSSchedule: Eq 71 at the training time-scale."""

import os
import subprocess
import sys

import pytest
import torch

from hope_hf import CMSSchedule

from helpers import tiny_model

PERIODS = [{"intermediate_size": 16, "update_period": 1}, {"intermediate_size": 8, "update_period": 3}]
# SGD rounds p - lr * g once, the tests compute it with two roundings: up to 1 ulp apart (1.2e-7 near 1)
SGD_ROUNDING = dict(atol=1e-7, rtol=2.5e-7)


def level_params(model, level):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f"cms.levels.{level}." in n}


def other_params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".cms.levels." not in n}


def batch_for(step):
    return torch.randint(2, 101, (2, 9), generator=torch.Generator().manual_seed(1000 + step))


def test_sgd_levels_change_only_at_pulses_by_lr_times_chunk_gradient_sum():
    model = tiny_model(cms_levels=PERIODS).train()
    lr = 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    schedule = CMSSchedule(model)
    at_last_pulse = level_params(model, 1)
    chunk_grads = {n: torch.zeros_like(p) for n, p in at_last_pulse.items()}
    for step in range(1, 8):
        before = {0: level_params(model, 0), 1: level_params(model, 1), "other": other_params(model)}
        ids = batch_for(step)
        model(ids, labels=ids).loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        schedule.step(optimizer)
        optimizer.zero_grad()
        for n, p in level_params(model, 0).items():  # period 1: plain SGD every step
            torch.testing.assert_close(p, before[0][n] - lr * grads[n], **SGD_ROUNDING)
        for n, p in other_params(model).items():
            torch.testing.assert_close(p, before["other"][n] - lr * grads[n], **SGD_ROUNDING)
        for n in chunk_grads:
            chunk_grads[n] += grads[n]
        now = level_params(model, 1)
        if step % 3 == 0:
            for n, p in now.items():
                torch.testing.assert_close(p, at_last_pulse[n] - lr * chunk_grads[n], **SGD_ROUNDING)
                assert not torch.equal(p, at_last_pulse[n])
            at_last_pulse, chunk_grads = now, {n: torch.zeros_like(p) for n, p in now.items()}
        else:
            for n, p in now.items():
                assert torch.equal(p, before[1][n]), f"{n} moved between pulses at step {step}"


def test_frozen_level_never_changes_and_overrides_apply():
    model = tiny_model(cms_levels=PERIODS).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = CMSSchedule(model, periods={1: None, "model.layers.1.cms:0": 2})
    frozen, layer1_level0 = level_params(model, 1), {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("model.layers.1.cms.levels.0.")}
    for step in range(1, 4):
        ids = batch_for(step)
        model(ids, labels=ids).loss.backward()
        schedule.step(optimizer)
        optimizer.zero_grad()
        moved = any(not torch.equal(p, layer1_level0[n]) for n, p in model.named_parameters() if n in layer1_level0)
        assert moved == (step >= 2)
    assert all(torch.equal(p, level_params(model, 1)[n]) for n, p in frozen.items())


def test_nested_resets_child_at_parent_pulse_and_moves_its_initial_state():
    levels = [{"intermediate_size": 16, "update_period": 4}, {"intermediate_size": 8, "update_period": 2}]
    model = tiny_model(cms_levels=levels, cms_variant="nested").train()
    lr = 0.05
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    schedule = CMSSchedule(model)
    initial = level_params(model, 1)
    child_grads = {n: torch.zeros_like(p) for n, p in initial.items()}
    for step in range(1, 5):
        ids = batch_for(step)
        model(ids, labels=ids).loss.backward()
        for n, p in model.named_parameters():
            if n in child_grads:
                child_grads[n] += p.grad
        schedule.step(optimizer)
        optimizer.zero_grad()
        if step == 2:  # the child's own pulse: a plain step from where it was
            for n, p in level_params(model, 1).items():
                torch.testing.assert_close(p, initial[n] - lr * child_grads[n], **SGD_ROUNDING)
    # step 4 is the parent's pulse: the child restarts from its initial state, which takes the
    # parent's step with every gradient the child saw in the parent's chunk (steps 1-4)
    for n, p in level_params(model, 1).items():
        torch.testing.assert_close(p, initial[n] - lr * child_grads[n], atol=1e-6, rtol=0)
        torch.testing.assert_close(schedule.initial_states[n], p, atol=0, rtol=0)


RESUME_SCRIPT = """
import sys, torch, hope_hf
sys.path.insert(0, {tests!r})
from transformers import AutoModelForCausalLM
from test_cms_schedule import batch_for, train_steps
model = AutoModelForCausalLM.from_pretrained("ckpt").train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
optimizer.load_state_dict(torch.load("ckpt/optimizer.pt"))
schedule = hope_hf.CMSSchedule(model)
schedule.load_state_dict(torch.load("ckpt/schedule.pt"))
train_steps(model, optimizer, schedule, range(5, 9))
torch.save(model.state_dict(), "resumed.pt")
"""


def train_steps(model, optimizer, schedule, steps):
    for step in steps:
        ids = batch_for(step)
        model(ids, labels=ids).loss.backward()
        schedule.step(optimizer)
        optimizer.zero_grad()


def test_resume_mid_chunk_in_new_process_is_bit_identical(tmp_path):
    model = tiny_model(cms_levels=PERIODS).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = CMSSchedule(model)
    train_steps(model, optimizer, schedule, range(1, 5))  # stops after step 4: level 1 is mid-chunk
    assert schedule.held, "level 1 should hold gradients mid-chunk"
    model.save_pretrained(tmp_path / "ckpt")
    torch.save(optimizer.state_dict(), tmp_path / "ckpt" / "optimizer.pt")
    torch.save(schedule.state_dict(), tmp_path / "ckpt" / "schedule.pt")
    train_steps(model, optimizer, schedule, range(5, 9))

    tests = os.path.dirname(__file__)
    result = subprocess.run([sys.executable, "-c", RESUME_SCRIPT.format(tests=tests)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = torch.load(tmp_path / "resumed.pt")
    for n, p in model.state_dict().items():
        assert torch.equal(p, resumed[n]), n


def test_bad_inputs_raise_clear_errors():
    model = tiny_model(cms_levels=PERIODS)
    with pytest.raises(ValueError, match="must be an int >= 1 or None"):
        CMSSchedule(model, periods=[1, 0])
    with pytest.raises(ValueError, match="level index 5"):
        CMSSchedule(model, periods={5: 2})
    with pytest.raises(ValueError, match="does not exist"):
        CMSSchedule(model, periods={"model.layers.9.cms:0": 2})
    with pytest.raises(ValueError, match="one entry per level index"):
        CMSSchedule(model, periods=[1])
    other = tiny_model(cms_levels=PERIODS, num_hidden_layers=3)
    with pytest.raises(ValueError, match="built for another model"):
        CMSSchedule(other).load_state_dict(CMSSchedule(model).state_dict())
    nested_wrong_order = [{"intermediate_size": 8, "update_period": 1}, {"intermediate_size": 8, "update_period": 4}]
    with pytest.raises(ValueError, match="must not be faster"):
        CMSSchedule(tiny_model(cms_levels=nested_wrong_order, cms_variant="nested"))
