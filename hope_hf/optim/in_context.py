"""Continual learning while reading: the CMS update rule (Eq 71) at the in-context time-scale.

``InContextLearner`` reads a long input in segments with the recurrent cache. Every segment
gives each CMS level the gradient of the next-token loss of the tokens just read, taken on
per-sequence fast weights (first-order: the cache from earlier segments is a constant); level l
sums them and, every ``period_l`` segments, takes one step with the mean over its chunk: SGD
(``rule="sgd"``, the exact Eq 71) or Adam with per-sequence moments (``rule="adam"``), optionally
clipped per level and pulled back toward the level's initial state (``decay``).
The model's parameters are never changed, and every batch row has its own fast weights and
cache (rows are read one by one).

    learner = InContextLearner(model, lr=1e-2, segment_size=64)
    [state] = learner.read(document_ids)                  # (1, T) -> one ReadingState per row
    answer = learner.generate(state, question_ids, max_new_tokens=20)

Nested variant (Eq 72): at the pulse of level s, level s+1's fast weights are reset to their
initial state, which first takes level s's step with the gradients level s+1 saw during that
chunk (first-order meta-learning). Only next-token pairs inside a segment enter the loss.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils.stateless import _reparametrize_module

from ..transformers_compat import CACHE_ARG, output_cache
from .cms_levels import find_cms_levels


@dataclass
class ReadingState:
    """What one sequence's reading leaves behind."""

    fast_weights: dict[str, torch.Tensor]  # CMS parameter name -> this sequence's fast weight
    cache: object  # the model's cache after the last token read
    input_ids: torch.Tensor  # (1, T) the tokens read
    logits: torch.Tensor  # (T, vocab) the logits produced while reading
    segment_losses: list[float] = field(default_factory=list)  # mean next-token loss per segment
    updates: dict[str, int] = field(default_factory=dict)  # level name -> number of steps taken
    initial_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # nested: children's initial states
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # rule "adam": (m, v)


UPDATE_RULES = ("sgd", "adam")


class InContextLearner:
    def __init__(
        self, model: nn.Module, lr=1e-2, segment_size: int = 64, periods=None, rule: str = "sgd",
        max_grad_norm: float | None = None, decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        """
        Args:
            model: a causal LM with CMS modules (HopeForCausalLM, LlamaCMSForCausalLM).
            lr: one learning rate for every level, or a list with one per level index.
            segment_size: tokens read per forward; level periods count segments.
            periods: as in ``find_cms_levels`` (default: the config's ``update_period``), in segments.
            rule: the step a level takes at its pulse from g, its mean next-token gradient over
                its chunk. "sgd": lr * g (Eq 71 with SGD; the exact rule). "adam": lr * m / (sqrt(v) + eps)
                with bias-corrected moments of g kept per sequence in the reading state, so every
                weight moves at most about lr per step whatever the gradient's scale.
            max_grad_norm: if set, g is clipped to this norm per level (over the level's weights).
            decay: after each step, the fast weights move back toward their initial state by this
                fraction (the CMS forgetting gate): W <- W0 + (1 - decay) (W - W0). In [0, 1).
            betas, eps: of rule "adam".
        """
        if isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size < 2:
            raise ValueError(f"segment_size must be an int >= 2, got {segment_size!r}")
        if rule not in UPDATE_RULES:
            raise ValueError(f"rule must be one of {UPDATE_RULES}, got {rule!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be None or > 0, got {max_grad_norm!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must both be in [0, 1), got {betas!r}")
        self.rule, self.max_grad_norm, self.decay, self.betas, self.eps = rule, max_grad_norm, float(decay), betas, eps
        self.model = model
        self.segment_size = segment_size
        self.levels = find_cms_levels(model, periods)
        num_levels = max(level.index for level in self.levels) + 1
        lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * num_levels
        if len(lrs) != num_levels:
            raise ValueError(f"lr as a list needs one entry per level index ({num_levels}), got {len(lrs)}")
        self.lrs = [float(x) for x in lrs]

    def read(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[ReadingState]:
        """Read every row of ``input_ids`` (B, T); padded positions (mask 0) are dropped."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        states = []
        for b in range(input_ids.shape[0]):
            row = input_ids[b] if attention_mask is None else input_ids[b][attention_mask[b].bool()]
            states.append(self._read_row(row[None]))
        return states

    def _read_row(self, ids: torch.Tensor) -> ReadingState:
        names = [name for level in self.levels for name, _ in level.params]
        params = dict(self.model.named_parameters())
        fast = {name: params[name].detach().clone() for name in names}
        initial = {name: fast[name].clone() for level in self.levels if level.child for name, _ in level.child.params}
        held = {name: torch.zeros_like(t) for name, t in fast.items()}
        meta_held = {name: torch.zeros_like(initial[name]) for name in initial}
        tokens_held = {level.name: 0 for level in self.levels}
        state = ReadingState(fast, None, ids, None, updates={level.name: 0 for level in self.levels})
        state.initial_weights = initial
        logits = []
        for segment_index, start in enumerate(range(0, ids.shape[1], self.segment_size), start=1):
            segment = ids[:, start : start + self.segment_size]
            out_logits, loss, grads = self._segment(segment, state)
            logits.append(out_logits)
            n_pairs = segment.shape[1] - 1
            state.segment_losses.append(loss / max(n_pairs, 1))
            for name, g in grads.items():
                held[name] += g
                if name in meta_held:
                    meta_held[name] += g
            for level in self.levels:
                tokens_held[level.name] += n_pairs
            self._pulse(segment_index, state, held, meta_held, initial, tokens_held)
        state.logits = torch.cat(logits, dim=1)[0]
        return state

    def _segment(self, segment: torch.Tensor, state: ReadingState):
        """Forward one segment with the fast weights; gradient of its summed next-token loss."""
        fast = {name: t.detach().requires_grad_() for name, t in state.fast_weights.items()}
        with torch.enable_grad():
            out = functional_call(
                self.model, fast, args=(), kwargs={"input_ids": segment, CACHE_ARG: state.cache, "use_cache": True}
            )
            loss = torch.zeros((), device=segment.device)
            if segment.shape[1] > 1:
                loss = F.cross_entropy(out.logits[0, :-1].float(), segment[0, 1:], reduction="sum")
            grads = torch.autograd.grad(loss, list(fast.values()), allow_unused=True) if loss.requires_grad else []
        state.cache = detach_cache(output_cache(out))
        grads = {name: g for name, g in zip(fast, grads) if g is not None}
        return out.logits.detach(), loss.item(), grads

    @torch.no_grad()
    def _pulse(self, segment_index, state, held, meta_held, initial, tokens_held) -> None:
        for level in self.levels:
            if level.period is None or segment_index % level.period != 0:
                continue
            tokens = max(tokens_held[level.name], 1)
            mean_grads = {name: held[name] / tokens for name, _ in level.params}
            state.updates[level.name] += 1
            for name, step in self._steps(level, mean_grads, state).items():
                state.fast_weights[name] = self._decayed(name, state.fast_weights[name] - step, initial)
                held[name].zero_()
            tokens_held[level.name] = 0
            if level.child is not None:  # Eq 72: reset the child to its (moved) initial state
                lr = self.lrs[level.index] / tokens  # the meta step is plain SGD
                for name, _ in level.child.params:
                    initial[name] = initial[name] - lr * meta_held[name]
                    meta_held[name].zero_()
                    held[name].zero_()
                    state.fast_weights[name] = initial[name].clone()
                tokens_held[level.child.name] = 0

    def _steps(self, level, mean_grads: dict, state: ReadingState) -> dict:
        """What each of ``level``'s fast weights subtracts at its pulse, by ``self.rule``."""
        lr = self.lrs[level.index]
        if self.max_grad_norm is not None:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in mean_grads.values()]))
            scale = (self.max_grad_norm / (norm + 1e-12)).clamp(max=1.0)
            mean_grads = {name: g * scale for name, g in mean_grads.items()}
        if self.rule == "sgd":
            return {name: lr * g for name, g in mean_grads.items()}
        (beta1, beta2), count = self.betas, state.updates[level.name]
        steps = {}
        for name, g in mean_grads.items():
            m, v = state.moments.get(name, (torch.zeros_like(g), torch.zeros_like(g)))
            m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
            state.moments[name] = (m, v)
            m_hat, v_hat = m / (1 - beta1**count), v / (1 - beta2**count)
            steps[name] = lr * m_hat / (v_hat.sqrt() + self.eps)
        return steps

    def _decayed(self, name: str, weight: torch.Tensor, initial: dict) -> torch.Tensor:
        """The forgetting gate: back toward the weight's initial state by ``self.decay``."""
        if not self.decay:
            return weight
        start = initial[name] if name in initial else self.model.get_parameter(name).detach()
        return start + (1 - self.decay) * (weight - start)

    @torch.no_grad()
    def generate(self, state: ReadingState, input_ids: torch.Tensor, **generate_kwargs) -> torch.Tensor:
        """Continue after reading: ``model.generate`` on ``input_ids`` (1, T) with this sequence's
        cache and fast weights. Returns only the new tokens. The cache is used up.

        Only the new tokens go in, with an attention mask that also covers the tokens read: the one
        form transformers continues from for every cache (recurrent layers only, or with attention
        layers) on every supported release."""
        new_mask = generate_kwargs.pop("attention_mask", None)
        if new_mask is None:
            new_mask = torch.ones_like(input_ids)
        read_mask = torch.ones_like(state.input_ids)
        attention_mask = torch.cat([read_mask, new_mask.to(read_mask.dtype)], dim=1)
        with _reparametrize_module(self.model, state.fast_weights):
            out = self.model.generate(
                input_ids, attention_mask=attention_mask, **{CACHE_ARG: state.cache}, **generate_kwargs
            )
        state.cache = None
        return out[:, input_ids.shape[1] :]


def detach_cache(cache):
    """Cut the autograd history of every tensor held by a transformers cache (in place)."""
    for layer in cache.layers:
        for attr in ("keys", "values"):
            tensor = getattr(layer, attr, None)
            if isinstance(tensor, torch.Tensor):
                setattr(layer, attr, tensor.detach())
        for attr in ("conv_states", "recurrent_states"):
            states = getattr(layer, attr, None)
            if isinstance(states, dict):
                for k, tensor in states.items():
                    if isinstance(tensor, torch.Tensor):
                        states[k] = tensor.detach()
    return cache
