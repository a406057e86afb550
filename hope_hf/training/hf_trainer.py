"""CMSSchedule (Eq 71) under the transformers ``Trainer``: a TrainerCallback.

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[CMSScheduleCallback()])

Per optimizer step (after the last micro-batch of a gradient accumulation window) the callback
lets the CMS levels hold back or release their gradients before ``optimizer.step()`` and
counts the step after it, exactly as ``CMSSchedule.step(optimizer)`` does in a hand-written loop.

Clipping: the schedule must decide which gradients the step applies before they are clipped
(the norm is the norm of what the optimizer gets). The Trainer clips before any callback runs,
so while training the callback takes ``args.max_grad_norm`` over (the Trainer's own clipping
is off, the callback clips after the release, ``args.max_grad_norm`` is restored at the end).
The ``grad_norm`` the Trainer logs is then the norm before the release, unclipped.

Checkpoints: at every save the schedule's state goes to ``cms_schedule.pt`` in the checkpoint
folder; ``trainer.train(resume_from_checkpoint=...)`` restores it. The callback looks for it
under ``args.output_dir/checkpoint-<global step>`` (where the Trainer writes checkpoints) or in
``resume_from`` when given.
"""

import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..optim.cms_schedule import CMSSchedule

SCHEDULE_FILE = "cms_schedule.pt"
logger = logging.getLogger(__name__)


class CMSScheduleCallback(TrainerCallback):
    """Applies a CMSSchedule to the Trainer's optimizer steps; saved and restored with checkpoints.

    periods: as for CMSSchedule (None: the periods in the model's config).
    resume_from: a checkpoint folder holding cms_schedule.pt, for a resume from a folder
    outside ``args.output_dir``.
    """

    def __init__(self, periods=None, resume_from: str | Path | None = None):
        self.periods = periods
        self.resume_from = resume_from
        self.schedule: CMSSchedule | None = None
        self.max_grad_norm = 0.0  # clipping taken over from the Trainer
        self._trainer_max_grad_norm = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.schedule = CMSSchedule(model, self.periods)  # after get_peft_model / freezing: trainable params only
        if state.global_step > 0:
            self._restore(args, state)
        if args.fp16 and args.max_grad_norm:
            raise ValueError("CMSScheduleCallback clips gradients itself and cannot unscale fp16 gradients: "
                             "use bf16 (or fp32), or max_grad_norm=0")
        self._trainer_max_grad_norm = args.max_grad_norm
        self.max_grad_norm = args.max_grad_norm or 0.0
        args.max_grad_norm = 0.0  # the Trainer must not clip before the release; on_pre_optimizer_step clips

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.schedule.release_gradients()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], self.max_grad_norm)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.schedule.after_optimizer_step()

    def on_save(self, args, state, control, **kwargs):
        schedule_state = self.schedule.state_dict()  # every process (gathers FSDP shards)
        if state.is_world_process_zero:
            torch.save(schedule_state, Path(args.output_dir) / f"checkpoint-{state.global_step}" / SCHEDULE_FILE)

    def on_train_end(self, args, state, control, **kwargs):
        args.max_grad_norm = self._trainer_max_grad_norm

    def _restore(self, args, state) -> None:
        folder = Path(self.resume_from) if self.resume_from else Path(args.output_dir) / f"checkpoint-{state.global_step}"
        path = folder / SCHEDULE_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"resuming at step {state.global_step}, but {path} does not exist: the CMS levels' held gradients "
                "and step count would be lost. Pass CMSScheduleCallback(resume_from=<checkpoint folder>)."
            )
        self.schedule.load_state_dict(torch.load(path, weights_only=True))
        if self.schedule.step_count != state.global_step:
            raise ValueError(f"{path} is at step {self.schedule.step_count}, the Trainer at step {state.global_step}")
        logger.info("CMS schedule restored from %s (step %d)", path, self.schedule.step_count)
