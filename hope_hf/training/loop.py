"""A single-process training loop for experiments: a fixed number of optimizer steps on batches
that the caller makes, with the CMS schedule, clipping, a learning-rate factor per step and a
periodic evaluation. The Accelerate loop of ``trainer.py`` is for training runs that checkpoint
and scale out; this one is for many short runs in one process (sweeps, comparisons), where the
caller owns the data order and the optimizers.
"""

import math
import time
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..optim.cms_levels import is_cms_module
from ..optim.cms_schedule import CMSSchedule


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def cms_optimizer_step(model, optimizers, schedule: CMSSchedule | None, max_grad_norm: float | None,
                       clip_grad_norm: Callable = torch.nn.utils.clip_grad_norm_) -> None:
    """CMS levels hold or release their gradients (Eq 71), then clip, then every optimizer steps."""
    if schedule is not None:
        schedule.release_gradients()
    if max_grad_norm:
        clip_grad_norm(model.parameters(), max_grad_norm)
    for optimizer in optimizers:
        optimizer.step()
    if schedule is not None:
        schedule.after_optimizer_step()


def train_steps(model, optimizers: list, backward: Callable[[int], torch.Tensor], steps: int, *,
                evaluate: Callable[[], dict] | None = None, eval_every: int = 0,
                lr_factor: Callable[[int], float] | None = None, max_grad_norm: float | None = 1.0,
                stop: Callable[[dict], bool] | None = None, schedule: CMSSchedule | None = None,
                description: str = "train", progress: bool = True) -> dict:
    """Run ``steps`` optimizer steps. ``backward(step)`` (step from 1) computes the step's loss,
    calls ``backward()`` on it and returns it detached. ``evaluate()`` returns a dict of metrics;
    it runs before the first step, every ``eval_every`` steps and after the last (``eval_every``
    0: only before and after). ``stop(evaluation)`` True ends training after that evaluation; a
    non-finite training loss ends it at once. ``schedule``: a CMSSchedule to continue (a run in
    phases keeps its levels' clocks and held gradients); by default a new one when the model has
    CMS levels.

    Returns {"evaluations": [{"step", **metrics}], "train_loss": [per step], "steps_run",
    "train_seconds" (optimizer steps only, evaluations excluded), "stopped_early"}."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if schedule is None and any(is_cms_module(m) for m in model.modules()):
        schedule = CMSSchedule(model)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lr_factor) for o in optimizers] if lr_factor else []
    model.train()
    evaluations = [{"step": 0, **evaluate()}] if evaluate else []
    train_loss, train_seconds, stopped_early = [], 0.0, False
    bar = tqdm(range(1, steps + 1), desc=description, disable=not progress)
    for step in bar:
        start = time.perf_counter()
        loss = backward(step)
        cms_optimizer_step(model, optimizers, schedule, max_grad_norm)
        for scheduler in schedulers:
            scheduler.step()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        train_seconds += time.perf_counter() - start
        train_loss.append(loss_value)
        if not math.isfinite(loss_value):
            stopped_early = True
            break
        if evaluate and ((eval_every and step % eval_every == 0) or step == steps):
            evaluations.append({"step": step, **evaluate()})
            metrics = {k: f"{v:.3f}" for k, v in evaluations[-1].items() if k != "step" and isinstance(v, float)}
            bar.set_postfix({"train_loss": f"{loss_value:.3f}", **metrics})
            if stop is not None and stop(evaluations[-1]):
                stopped_early = step < steps
                break
    model.train()
    return {"evaluations": evaluations, "train_loss": train_loss, "steps_run": len(train_loss),
            "train_seconds": train_seconds, "stopped_early": stopped_early}


__all__ = ["cms_optimizer_step", "train_steps", "warmup_cosine"]
