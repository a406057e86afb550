"""CMSSchedule under the transformers Trainer (CMSScheduleCallback): the same weights as the
hand-written loop, with gradient accumulation and clipping, and an exact resume from a save step."""

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hope_hf import CMSSchedule
from hope_hf.training import CMSScheduleCallback
from hope_hf.training.hf_trainer import SCHEDULE_FILE

from helpers import tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster, and much faster on a busy machine (conftest restores the count)."""
    torch.set_num_threads(1)


# the slow level pulses at step 3: a checkpoint at step 2 holds two steps of its gradients
LEVELS = [{"intermediate_size": 16, "update_period": 1}, {"intermediate_size": 8, "update_period": 3}]
STEPS, BATCH, ACCUMULATION, LR, MAX_GRAD_NORM = 4, 2, 2, 1e-2, 0.5


def examples(count=STEPS * BATCH * ACCUMULATION, length=9):
    generator = torch.Generator().manual_seed(7)
    return [{"input_ids": ids, "labels": ids} for ids in torch.randint(2, 101, (count, length), generator=generator)]


def initial_model():
    torch.manual_seed(0)
    return tiny_model(mixer=["titans", "attention"], cms_levels=LEVELS).train()


def training_arguments(output_dir, **overrides):
    fields = dict(
        output_dir=str(output_dir), max_steps=STEPS, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATION, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, optim="adamw_torch", max_grad_norm=MAX_GRAD_NORM, train_sampling_strategy="sequential",
        save_strategy="no", logging_steps=1, report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )
    fields.update(overrides)
    return TrainingArguments(**fields)


def hand_written_loop(model) -> list[float]:
    """release, clip, step: hope_hf's own loop (training/trainer.py optimizer_step); the pre-clip norms."""
    data = examples()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    schedule = CMSSchedule(model)
    norms = []
    for step in range(STEPS):
        for micro in range(ACCUMULATION):
            batch = data[(step * ACCUMULATION + micro) * BATCH:][:BATCH]
            ids = torch.stack([example["input_ids"] for example in batch])
            (model(input_ids=ids, labels=ids).loss / ACCUMULATION).backward()
        schedule.release_gradients()
        norms.append(torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], MAX_GRAD_NORM).item())
        optimizer.step()
        schedule.after_optimizer_step()
        optimizer.zero_grad()
    return norms


def assert_same_weights(model, reference, atol):
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), atol=atol, rtol=0, msg=name)


def test_trainer_with_callback_matches_the_hand_written_loop(tmp_path):
    reference = initial_model()
    norms = hand_written_loop(reference)
    assert max(norms) > MAX_GRAD_NORM, "clipping must act for the test to hold it"

    model = initial_model()
    callback = CMSScheduleCallback()
    args = training_arguments(tmp_path)
    Trainer(model=model, args=args, train_dataset=examples(), callbacks=[callback]).train()
    assert callback.schedule.step_count == STEPS
    assert args.max_grad_norm == MAX_GRAD_NORM  # handed back after training
    assert_same_weights(model, reference, atol=1e-6)  # measured: 0 (bit-identical) on CPU


class StopAt(TrainerCallback):
    """Stops training after a step, as a preempted job would (after that step's checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_from_a_save_step_ends_at_the_uninterrupted_weights(tmp_path):
    uninterrupted = initial_model()
    Trainer(model=uninterrupted, args=training_arguments(tmp_path / "full"), train_dataset=examples(),
            callbacks=[CMSScheduleCallback()]).train()

    interrupted_args = training_arguments(tmp_path / "run", save_strategy="steps", save_steps=2)
    Trainer(model=initial_model(), args=interrupted_args, train_dataset=examples(),
            callbacks=[CMSScheduleCallback(), StopAt(2)]).train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    saved = torch.load(checkpoint / SCHEDULE_FILE, weights_only=True)
    assert saved["step_count"] == 2 and saved["held"], "the slow level's held gradients are in the checkpoint"

    resumed = tiny_model(mixer=["titans", "attention"], cms_levels=LEVELS).train()  # other initial weights: the checkpoint's count
    callback = CMSScheduleCallback()
    Trainer(model=resumed, args=interrupted_args, train_dataset=examples(), callbacks=[callback]).train(
        resume_from_checkpoint=str(checkpoint))
    assert callback.schedule.step_count == STEPS
    assert_same_weights(resumed, uninterrupted, atol=0)  # measured: bit-identical


def test_resume_without_the_schedule_state_is_refused(tmp_path):
    args = training_arguments(tmp_path, save_strategy="steps", save_steps=2)
    Trainer(model=initial_model(), args=args, train_dataset=examples(), callbacks=[CMSScheduleCallback(), StopAt(2)]).train()
    (tmp_path / "checkpoint-2" / SCHEDULE_FILE).unlink()
    trainer = Trainer(model=initial_model(), args=args, train_dataset=examples(), callbacks=[CMSScheduleCallback()])
    with pytest.raises(FileNotFoundError, match="held gradients"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_callback_on_a_lora_model_schedules_only_the_lora_level_weights(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(initial_model(), LoraConfig(r=4, target_modules=["gate_proj", "up_proj", "down_proj", "o_proj"]))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    callback = CMSScheduleCallback()
    Trainer(model=model, args=training_arguments(tmp_path), train_dataset=examples(), callbacks=[callback]).train()
    held = [name for level in callback.schedule.levels for name, _ in level.params]
    assert held and all(".lora_" in name for name in held)
    assert callback.schedule.step_count == STEPS
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_trainer_trains_packed_rows_from_data_collator_with_flattening(tmp_path):
    """transformers' DataCollatorWithFlattening packs a batch into one row with position_ids that
    restart and labels -100 at every sequence start: the loss of the packed row is the token-weighted
    mean of the sequences' own losses, and the Trainer trains on it."""
    from transformers import DataCollatorWithFlattening

    model = initial_model().double()
    generator = torch.Generator().manual_seed(3)
    features = [{"input_ids": torch.randint(2, 101, (n,), generator=generator).tolist()} for n in (6, 13, 9, 2)]
    batch = DataCollatorWithFlattening()(features)
    assert batch["input_ids"].shape == (1, 30) and batch["position_ids"][0, 6] == 0
    packed = model(**batch).loss
    losses = [(model(torch.tensor([f["input_ids"]]), labels=torch.tensor([f["input_ids"]])).loss, len(f["input_ids"]) - 1)
              for f in features]
    expected = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    torch.testing.assert_close(packed, expected, atol=1e-6, rtol=0)  # transformers computes the loss in fp32

    model = initial_model()
    before = [p.detach().clone() for p in model.parameters()]
    args = training_arguments(tmp_path, max_steps=2, gradient_accumulation_steps=1, remove_unused_columns=False)
    Trainer(model=model, args=args, train_dataset=features * 2, data_collator=DataCollatorWithFlattening()).train()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
