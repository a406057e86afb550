"""PEFT (LoRA) on Hope (titans, attention, hybrid) and Llama-CMS: training, adapter save/reload,
merge, and CMSSchedule on a PEFT-wrapped model."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from hope_hf import CMSSchedule, LlamaCMSForCausalLM

from helpers import CONFIGS, random_ids, tiny_model
from test_llama_cms import tiny_llama


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster, and much faster on a busy machine (conftest restores the count)."""
    torch.set_num_threads(1)


ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
TITANS = ["u_proj", "q_proj", "g_proj", "o_proj"]
CMS = ["gate_proj", "up_proj", "down_proj"]
TARGETS = sorted(set(ATTENTION + TITANS + CMS))
ARCHITECTURES = ["titans", "attention", "hybrid", "llama_cms"]


def tiny_base(architecture):
    if architecture == "llama_cms":
        levels = [{"name": "slow", "intermediate_size": 16, "update_period": 4},
                  {"name": "fast", "intermediate_size": 16, "update_period": 1}]
        return LlamaCMSForCausalLM.from_llama(tiny_llama(), cms_levels=levels, pretrained_update_period=8).eval()
    return tiny_model(**CONFIGS[architecture])


def expected_lora_modules(model) -> set[str]:
    """Every nn.Linear whose last name is a target: the projections of attention, titans and CMS levels."""
    return {name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS}


def lora(model):
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_lora_wraps_every_projection_by_name(architecture):
    base = tiny_base(architecture)
    expected = expected_lora_modules(base)
    model = lora(base)
    wrapped = {name.removeprefix("base_model.model.") for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == expected
    kinds = {name.rsplit(".", 1)[-1] for name in wrapped}
    assert set(CMS) <= kinds
    if architecture in ("titans", "hybrid"):
        assert {"u_proj", "g_proj"} <= kinds
    if architecture != "titans":
        assert {"k_proj", "v_proj"} <= kinds
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_lora_trains_saves_reloads_and_merges(architecture, tmp_path):
    base = tiny_base(architecture)
    base.save_pretrained(tmp_path / "base")
    model = lora(base).train()
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    motif = random_ids(1, 8).repeat(2, 4)
    losses = []
    for _ in range(8):
        loss = model(input_ids=motif, labels=motif).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), f"LoRA changed the frozen base weight {n}"

    model.eval()
    probe = random_ids(2, 13)
    trained = logits(model, probe)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    fresh_base = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    assert not torch.allclose(logits(fresh_base, probe), trained, atol=1e-4)  # the adapter matters
    reloaded = PeftModel.from_pretrained(fresh_base, tmp_path / "adapter").eval()
    assert torch.equal(logits(reloaded, probe), trained)

    merged = reloaded.merge_and_unload()
    assert type(merged) is type(base) and not any(hasattr(m, "lora_A") for m in merged.modules())
    # W + BA in place of Wx + B(Ax): equal up to float32 summation order
    torch.testing.assert_close(logits(merged, probe), trained, atol=1e-5, rtol=0)


@pytest.mark.parametrize("architecture", ["hybrid", "llama_cms"])
def test_cms_schedule_on_a_peft_model_holds_only_trainable_level_parameters(architecture):
    model = lora(tiny_base(architecture)).train()
    schedule = CMSSchedule(model)
    held = {name for level in schedule.levels for name, _ in level.params}
    level_modules = [m for m in model.modules() if hasattr(m, "level_parameters")]
    trainable_in_levels = {n for n, p in model.named_parameters() if p.requires_grad
                           and any(p is q for m in level_modules for level in m.level_parameters() for q in level)}
    assert held == trainable_in_levels and held and all(".lora_" in n for n in held)

    slow = [level for level in schedule.levels if level.period == 4]
    assert slow
    slow_params = [p for level in slow for _, p in level.params]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    snapshot = lambda: [p.detach().clone() for p in slow_params]
    for step in range(1, 5):
        before = snapshot()
        ids = random_ids(2, 9)
        model(input_ids=ids, labels=ids).loss.backward()
        schedule.step(optimizer)
        optimizer.zero_grad()
        changed = any(not torch.equal(a, b) for a, b in zip(before, snapshot()))
        assert changed == (step == 4), f"slow level's LoRA parameters at step {step}"
    assert schedule.state_dict()["periods"] == {level.name: level.period for level in schedule.levels}
