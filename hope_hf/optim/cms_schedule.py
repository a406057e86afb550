"""CMSSchedule: the CMS update rule (Eq 71) at the training time-scale.

Level l of every CMS has a period C_l in optimizer steps. Between its pulses the level's
gradients are held back from the optimizer and summed; at a pulse the sum over the chunk is
handed to the optimizer once (for SGD exactly Eq 71: theta -= lr * sum of the chunk's
gradients) and cleared. Parameters outside the CMS are untouched (updated every step).

Nested variant (Eq 72): at the pulse of level s, level s+1 is reset to its initial state, and
that initial state takes level s's step: it gets the gradients level s+1 saw during level s's
chunk (first-order meta-learning) and becomes the result of the optimizer step.

    schedule = CMSSchedule(model)              # periods from the config, or periods=[1, 4, None]
    loss.backward()
    schedule.step(optimizer)                    # instead of optimizer.step()
    optimizer.zero_grad()

To clip gradients, call ``schedule.release_gradients()``, clip, ``optimizer.step()``, then
``schedule.after_optimizer_step()``. Under gradient accumulation or Accelerate, call it once
per optimizer step (when ``accelerator.sync_gradients``).
"""

import torch
from torch import nn

from .cms_levels import find_cms_levels, level_periods

try:  # FSDP2 shards parameters (and so gradients) as DTensors
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # a torch built without distributed support
    DTensor = distribute_tensor = None


def is_sharded(tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def portable(tensor: torch.Tensor) -> torch.Tensor:
    """A plain full tensor: a DTensor's shards are gathered (a collective: every process calls this)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor.clone()


def like(saved: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``saved`` (a full tensor) laid out as ``param``: on its device, sharded as it is (a collective for DTensors)."""
    if is_sharded(param):
        return distribute_tensor(saved.to(param.device_mesh.device_type), param.device_mesh, param.placements)
    return saved.to(param.device)


class CMSSchedule:
    def __init__(self, model: nn.Module, periods=None):
        self.levels = find_cms_levels(model, periods)
        self.step_count = 0
        self.held = {}  # param name -> gradients summed since the level's last pulse
        self.meta_held = {}  # nested: param name -> gradients summed since the parent's last pulse
        self.initial_states = {}  # nested: param name -> initial state of a child level
        for level in self.levels:
            if level.child is not None:
                for name, p in level.child.params:
                    self.initial_states[name] = p.detach().clone()
        self._resets_pending = []

    def pulses(self, level, step: int | None = None) -> bool:
        step = self.step_count + 1 if step is None else step
        return level.period is not None and step % level.period == 0

    @torch.no_grad()
    def release_gradients(self) -> None:
        """Before ``optimizer.step()``: hold back the gradients of levels between pulses, give
        pulsing levels the sum over their chunk, reset nested children."""
        step = self.step_count + 1
        children = {id(level.child) for level in self.levels if level.child is not None}
        for level in self.levels:
            pulse = self.pulses(level, step)
            for name, p in level.params:
                if p.grad is not None and id(level) in children:
                    self._add(self.meta_held, name, p.grad)
                if pulse:
                    if name in self.held:
                        p.grad = self.held.pop(name) + (p.grad if p.grad is not None else 0)
                else:
                    if p.grad is not None and level.period is not None:
                        self._add(self.held, name, p.grad)
                    p.grad = None
        self._resets_pending = []
        for level in self.levels:
            if level.child is not None and self.pulses(level, step):
                self._reset_child(level.child)

    def _reset_child(self, child) -> None:
        for name, p in child.params:
            p.copy_(self.initial_states[name])
            self.held.pop(name, None)
            meta_grad = self.meta_held.pop(name, None)
            p.grad = meta_grad  # the initial state takes a step with what the child saw
        self._resets_pending.append(child)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        for child in self._resets_pending:
            for name, p in child.params:
                self.initial_states[name] = p.detach().clone()
        self._resets_pending = []
        self.step_count += 1

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.release_gradients()
        optimizer.step()
        self.after_optimizer_step()

    @staticmethod
    def _add(store: dict, name: str, grad: torch.Tensor) -> None:
        if name in store:
            store[name] += grad
        else:
            store[name] = grad.detach().clone()

    def state_dict(self) -> dict:
        """Plain full tensors, the same in every process; under FSDP every process must call this."""
        return {
            "step_count": self.step_count,
            "periods": level_periods(self.levels),
            "held": {k: portable(v) for k, v in self.held.items()},
            "meta_held": {k: portable(v) for k, v in self.meta_held.items()},
            "initial_states": {k: portable(v) for k, v in self.initial_states.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Under FSDP every process must call this (the saved tensors are sharded as the parameters are)."""
        if state["periods"] != level_periods(self.levels):
            raise ValueError(
                "this CMSSchedule state was built for another model or other periods: "
                f"saved levels {state['periods']}, this schedule's {level_periods(self.levels)}"
            )
        params = {name: p for level in self.levels for name, p in level.params}
        laid_out = lambda d: {k: like(v, params[k]) for k, v in d.items()}
        self.step_count = state["step_count"]
        self.held = laid_out(state["held"])
        self.meta_held = laid_out(state["meta_held"])
        self.initial_states = laid_out(state["initial_states"])
