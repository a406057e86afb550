"""Continual learning while reading: the CMS update rule (Eq 71) at the in-context time-scale.

``InContextLearner`` reads a long input in segments with the recurrent cache. Every segment
gives each CMS level the gradient of the next-token loss of the tokens just read, taken on
per-sequence fast weights (first-order: the cache from earlier segments is a constant); level l
sums them and, every ``period_l`` segments, takes one step with the mean over its chunk: SGD
(``rule="sgd"``, the exact Eq 71) or Adam with per-sequence moments (``rule="adam"``), optionally
clipped per level and pulled back toward the level's initial state (``decay``).
The model's parameters are never changed, and every batch row has its own fast weights and
cache: rows are read together, each CMS linear layer computing row b with row b's weights.

    learner = InContextLearner(model, lr=1e-2, segment_size=64)
    [state] = learner.read(document_ids)                  # (1, T) -> one ReadingState per row
    answer = learner.generate(state, question_ids, max_new_tokens=20)

Nested variant (Eq 72): at the pulse of level s, level s+1's fast weights are reset to their
initial state, which first takes level s's step with the gradients level s+1 saw during that
chunk (first-order meta-learning). A segment's loss counts every next-token pair whose input
token is in it, the pair across the boundary to the next segment included.
"""

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.nn.utils.stateless import _reparametrize_module
from transformers.cache_utils import DynamicLayer

from ..modeling.modeling_hope import HopeCache
from ..optim.cms_levels import find_cms_levels
from ..transformers_compat import CACHE_ARG, output_cache


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
    meta_gradients: dict[str, torch.Tensor] = field(default_factory=dict)  # see InContextLearner(meta_gradients=)


UPDATE_RULES = ("sgd", "adam", "rms")
RMS_EPS = 2e-5  # rule "rms": added to the training-gradient RMS (Krause et al.'s epsilon)
STATISTICS_FILE = "test_time_statistics.safetensors"  # rule "rms": the RMS a saved model reads with


@dataclass
class _BatchReading:
    """The reading state of the rows still being read, each tensor with the batch first."""

    rows: list[int]  # position in the caller's batch of each row here
    fast_weights: dict[str, torch.Tensor]  # (B, *param shape)
    held: dict[str, torch.Tensor]  # summed gradients since the level's last step
    meta_held: dict[str, torch.Tensor]  # nested: gradients of a child since its parent's last step
    initial_weights: dict[str, torch.Tensor]  # nested: children's initial states
    tokens_held: dict[str, torch.Tensor]  # level name -> (B,) next-token pairs since its last step
    updates: dict[str, torch.Tensor]  # level name -> (B,) steps taken
    losses: list[list[float]]
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    meta_gradients: dict[str, torch.Tensor] = field(default_factory=dict)
    cache: object = None
    logits: list[torch.Tensor] = field(default_factory=list)  # one (B, segment, vocab) per segment

    def select(self, keep: torch.Tensor) -> "_BatchReading":
        """The same reading with only the rows at positions ``keep``."""
        pick = lambda tensors: {name: t[keep] for name, t in tensors.items()}
        return _BatchReading(
            rows=[self.rows[i] for i in keep.tolist()],
            fast_weights=pick(self.fast_weights), held=pick(self.held), meta_held=pick(self.meta_held),
            initial_weights=pick(self.initial_weights), tokens_held=pick(self.tokens_held),
            updates=pick(self.updates), losses=[self.losses[i] for i in keep.tolist()],
            moments={name: (m[keep], v[keep]) for name, (m, v) in self.moments.items()},
            meta_gradients=pick(self.meta_gradients),
            cache=cache_rows(self.cache, keep), logits=[t[keep] for t in self.logits],
        )

    def row_state(self, i: int, input_ids: torch.Tensor, length: int) -> ReadingState:
        """What reading row ``i`` (``length`` tokens, then padding) leaves behind."""
        return ReadingState(
            fast_weights={name: t[i] for name, t in self.fast_weights.items()},
            cache=cache_rows(self.cache, torch.tensor([i]), length),
            input_ids=input_ids,
            logits=torch.cat([t[i] for t in self.logits])[:length],
            segment_losses=self.losses[i],
            updates={name: int(n[i]) for name, n in self.updates.items()},
            initial_weights={name: t[i] for name, t in self.initial_weights.items()},
            moments={name: (m[i], v[i]) for name, (m, v) in self.moments.items()},
            meta_gradients={name: t[i] for name, t in self.meta_gradients.items()},
        )


class _FromConfig:
    def __repr__(self):
        return "FROM_CONFIG"


FROM_CONFIG = _FromConfig()  # an option left out: the model's config.test_time_learning, else BUILT_IN_RULE
# Eq 71 with SGD on every level at its config period: the rule of a model whose config has no entry
BUILT_IN_RULE = {"rule": "sgd", "lr": 1e-2, "segment_size": 64, "periods": None, "max_grad_norm": None, "decay": 0.0}


class InContextLearner:
    rules = UPDATE_RULES

    def __init__(
        self, model: nn.Module, lr=FROM_CONFIG, segment_size=FROM_CONFIG, periods=FROM_CONFIG, rule=FROM_CONFIG,
        max_grad_norm=FROM_CONFIG, decay=FROM_CONFIG, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        meta_gradients: bool = False, statistics: dict | None = None,
    ):
        """
        Every option left out is taken from ``model.config.test_time_learning`` (saved with the
        checkpoint; ``hope_hf.training.calibration`` picks it), and where that has none, from
        ``BUILT_IN_RULE`` (Eq 71 with SGD at lr 1e-2, segments of 64, config periods).

        Args:
            model: a causal LM with CMS modules (HopeForCausalLM, LlamaCMSForCausalLM).
            lr: one learning rate for every level, or a list with one per level index.
            segment_size: tokens read per forward; level periods count segments.
            periods: as in ``find_cms_levels`` (None: the config's ``update_period``), in segments.
            rule: the step a level takes at its pulse from g, its mean next-token gradient over
                its chunk. "sgd": lr * g (Eq 71 with SGD; the exact rule). "adam": lr * m / (sqrt(v) + eps)
                with bias-corrected moments of g kept per sequence in the reading state, so every
                weight moves at most about lr per step whatever the gradient's scale. "rms": lr * g / (rms + 2e-5),
                rms the root mean square of the weight's gradient on training data (``statistics``):
                dynamic evaluation's normalisation (Krause et al. 2018) on the CMS levels.
            max_grad_norm: if not None, g is clipped to this norm per level (over the level's weights).
            decay: after each step, the fast weights move back toward their initial state by this
                fraction (the CMS forgetting gate): W <- W0 + (1 - decay) (W - W0). In [0, 1).
            betas, eps: of rule "adam".
            statistics: of rule "rms", {parameter name: rms} (``gradient_statistics``) for every
                fast weight; default: the model's folder's test_time_statistics.safetensors, which
                ``hope_hf.training.calibration`` writes beside a calibrated "rms" rule.
            meta_gradients: if True, each ReadingState also holds, per fast weight, the sum over every
                segment after the first of the gradient of that segment's mean next-token loss at the
                fast weights then in use: the first-order meta-gradient (first-order MAML) of the
                loss after updates with respect to the levels' initial state, which a training loop
                can apply to the model's parameters (``scripts/meta_learn_fast_level.py``).
        """
        given = dict(rule=rule, lr=lr, segment_size=segment_size, periods=periods, max_grad_norm=max_grad_norm, decay=decay)
        entry = getattr(getattr(model, "config", None), "test_time_learning", None) or {}
        options = {**BUILT_IN_RULE, **entry, **{k: v for k, v in given.items() if v is not FROM_CONFIG}}
        rule, lr, segment_size, decay = options["rule"], options["lr"], options["segment_size"], options["decay"]
        max_grad_norm = options["max_grad_norm"]
        if isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size < 2:
            raise ValueError(f"segment_size must be an int >= 2, got {segment_size!r}")
        if rule not in self.rules:
            raise ValueError(f"rule must be one of {self.rules}, got {rule!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be None or > 0, got {max_grad_norm!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.options = options  # the rule in use, each option resolved
        self.rule, self.max_grad_norm, self.decay, self.betas, self.eps = rule, max_grad_norm, float(decay), betas, eps
        self.meta_gradients = meta_gradients
        self.model = model
        self.segment_size = segment_size
        self.levels = self._find_levels(options["periods"])
        num_levels = max(level.index for level in self.levels) + 1
        lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * num_levels
        if len(lrs) != num_levels:
            raise ValueError(f"lr as a list needs one entry per level index ({num_levels}), got {len(lrs)}")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in lrs):
            raise ValueError(f"lr must be a number >= 0 or a list of them (one per level index), got {lr!r}")
        self.lrs = [float(x) for x in lrs]
        self.statistics = statistics if rule != "rms" or statistics is not None else saved_statistics(model)
        missing = [name for level in self.levels for name, _ in level.params if rule == "rms" and name not in self.statistics]
        if missing:
            raise ValueError(f"rule 'rms' needs the training-gradient RMS of every fast weight; statistics lacks {missing[:3]}")

    def _find_levels(self, periods) -> list:
        """The groups of fast weights that learn while reading, each with its period (in segments)."""
        return find_cms_levels(self.model, periods)

    def read(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[ReadingState]:
        """Read every row of ``input_ids`` (B, T) in one batch; padded positions (mask 0) are dropped,
        so rows may have different lengths. Returns one ReadingState per row."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
            )
        rows = [ids if attention_mask is None else ids[attention_mask[b].bool()] for b, ids in enumerate(input_ids)]
        if any(row.numel() == 0 for row in rows):
            raise ValueError("every row of input_ids needs at least one token that is not padding")
        lengths = torch.tensor([row.numel() for row in rows])
        ids = pad_sequence(rows, batch_first=True)  # (B, T), right-padded: every row starts at position 0
        # the target of token t is token t+1, also across a segment boundary; none after a row's last token
        targets = torch.cat([ids[:, 1:], ids.new_zeros(len(rows), 1)], dim=1)
        has_target = torch.arange(ids.shape[1])[None, :] < (lengths - 1)[:, None]
        batch = self._start(len(rows), ids.device)
        states: list[ReadingState | None] = [None] * len(rows)
        for segment_index, start in enumerate(range(0, ids.shape[1], self.segment_size), start=1):
            end = start + self.segment_size
            rows_here = batch.rows
            real = (torch.arange(start, min(end, ids.shape[1]))[None, :] < lengths[rows_here, None]).to(ids.device)
            self._segment(batch, ids[rows_here, start:end], targets[rows_here, start:end],
                          has_target[rows_here, start:end].to(ids.device), real, start)
            self._pulse(segment_index, batch)
            finished = lengths[rows_here] <= end
            for i in finished.nonzero().flatten().tolist():
                b = rows_here[i]
                states[b] = batch.row_state(i, rows[b][None], int(lengths[b]))
            if bool(finished.any()):
                batch = batch.select((~finished).nonzero().flatten())
        return states

    def _start(self, batch_size: int, device) -> "_BatchReading":
        params = dict(self.model.named_parameters())
        per_row = lambda name: params[name].detach().unsqueeze(0).repeat(batch_size, *[1] * params[name].dim())
        fast = {name: per_row(name) for level in self.levels for name, _ in level.params}
        initial = {name: per_row(name) for level in self.levels if level.child for name, _ in level.child.params}
        zeros = torch.zeros(batch_size, device=device)
        return _BatchReading(
            rows=list(range(batch_size)),
            fast_weights=fast,
            held={name: torch.zeros_like(t) for name, t in fast.items()},
            meta_held={name: torch.zeros_like(t) for name, t in initial.items()},
            initial_weights=initial,
            tokens_held={level.name: zeros.clone() for level in self.levels},
            updates={level.name: zeros.clone().long() for level in self.levels},
            losses=[[] for _ in range(batch_size)],
            meta_gradients={name: torch.zeros_like(t) for name, t in fast.items()} if self.meta_gradients else {},
        )

    def _segment(self, batch, segment, targets, has_target, real, start: int) -> None:
        """Forward one segment with each row's fast weights; add the gradient of each row's summed
        next-token loss to what its levels hold."""
        learns = self.meta_gradients or any(self.lrs)  # else plain reading: no gradient, no autograd graph
        fast = {name: t.detach().requires_grad_(learns) for name, t in batch.fast_weights.items()}
        # a mask only where a row ends inside this segment (every earlier position of the batch is real)
        mask = None if bool(real.all()) else torch.cat([real.new_ones(len(real), start), real], dim=1).long()
        with torch.set_grad_enabled(learns), per_row_weights(self.model, fast):
            out = self.model(input_ids=segment, attention_mask=mask, use_cache=True, **{CACHE_ARG: batch.cache})
            logits = out.logits.to(torch.promote_types(out.logits.dtype, torch.float32))  # fp32 at least
            token_losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            row_losses = (token_losses * has_target).sum(-1)  # (B,)
            grads = (torch.autograd.grad(row_losses.sum(), list(fast.values()), allow_unused=True) if learns
                     else [None] * len(fast))
        batch.cache = detach_cache(output_cache(out))
        batch.logits.append(out.logits.detach())
        pairs = has_target.sum(-1)
        for i, (loss, n) in enumerate(zip(row_losses.tolist(), pairs.tolist())):
            if n:
                batch.losses[i].append(loss / n)
        for name, g in zip(fast, grads):
            if g is not None:
                batch.held[name] += g
                if name in batch.meta_held:
                    batch.meta_held[name] += g
                if name in batch.meta_gradients and start > 0:  # after the first segment; of each row's mean loss
                    batch.meta_gradients[name] += g / _rows(pairs.clamp(min=1), g)
        for level in self.levels:
            batch.tokens_held[level.name] += pairs.to(batch.tokens_held[level.name].dtype)

    @torch.no_grad()
    def _pulse(self, segment_index: int, batch) -> None:
        """Every level whose period ends at this segment takes its step, row by row in parallel."""
        for level in self.levels:
            if level.period is None or segment_index % level.period != 0:
                continue
            tokens = batch.tokens_held[level.name].clamp(min=1)  # (B,)
            mean_grads = {name: batch.held[name] / _rows(tokens, batch.held[name]) for name, _ in level.params}
            batch.updates[level.name] += 1
            for name, step in self._steps(level, mean_grads, batch).items():
                batch.fast_weights[name] = self._decayed(name, batch.fast_weights[name] - step, batch.initial_weights)
                batch.held[name].zero_()
            batch.tokens_held[level.name].zero_()
            if level.child is not None:  # Eq 72: reset the child to its (moved) initial state
                for name, _ in level.child.params:
                    lr = self.lrs[level.index] / _rows(tokens, batch.meta_held[name])  # the meta step is plain SGD
                    batch.initial_weights[name] -= lr * batch.meta_held[name]
                    batch.meta_held[name].zero_()
                    batch.held[name].zero_()
                    batch.fast_weights[name] = batch.initial_weights[name].clone()
                batch.tokens_held[level.child.name].zero_()

    def _steps(self, level, mean_grads: dict, batch) -> dict:
        """What each of ``level``'s fast weights (B, ...) subtracts at its pulse, by ``self.rule``."""
        lr = self.lrs[level.index]
        if self.max_grad_norm is not None:  # one norm per row over the level's weights
            norm = torch.stack([g.flatten(1).norm(dim=1) for g in mean_grads.values()]).norm(dim=0)
            scale = (self.max_grad_norm / (norm + 1e-12)).clamp(max=1.0)
            mean_grads = {name: g * _rows(scale, g) for name, g in mean_grads.items()}
        if self.rule == "sgd":
            return {name: lr * g for name, g in mean_grads.items()}
        if self.rule == "rms":
            return {name: lr * g / (self.statistics[name] + RMS_EPS) for name, g in mean_grads.items()}
        (beta1, beta2), count = self.betas, batch.updates[level.name]
        steps = {}
        for name, g in mean_grads.items():
            m, v = batch.moments.get(name, (torch.zeros_like(g), torch.zeros_like(g)))
            m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
            batch.moments[name] = (m, v)
            m_hat, v_hat = m / _rows(1 - beta1**count, g), v / _rows(1 - beta2**count, g)
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
        with _reparametrize_module(self.model, state.fast_weights, tie_weights=True):
            out = self.model.generate(
                input_ids, attention_mask=attention_mask, **{CACHE_ARG: state.cache}, **generate_kwargs
            )
        state.cache = None
        return out[:, input_ids.shape[1] :]


def saved_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """The RMS statistics saved beside a model loaded from a folder (``STATISTICS_FILE``)."""
    folder = Path(getattr(model.config, "_name_or_path", "") or ".")
    if not (folder / STATISTICS_FILE).is_file():
        raise ValueError(f"rule 'rms' needs statistics= (hope_hf.test_time.gradient_statistics) or a model loaded "
                         f"from a folder holding {STATISTICS_FILE} (hope_hf.training.calibration writes it); "
                         f"{str(folder)!r} has none")
    return load_file(folder / STATISTICS_FILE)


def detach_cache(cache):
    """Cut the autograd history of every tensor ``cache`` holds, in place: ``HopeCache.detach``, or
    for transformers' DynamicCache (Llama-CMS), whose layers hold keys and values only, theirs."""
    if isinstance(cache, HopeCache):
        return cache.detach()
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer):
            raise TypeError(f"InContextLearner reads with a HopeCache or a DynamicCache of key/value layers, got a {type(layer).__name__}")
        if layer.keys is not None:
            layer.keys, layer.values = layer.keys.detach(), layer.values.detach()
    return cache


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) values shaped to broadcast over ``like`` (B, ...)."""
    return values.to(like.dtype).view(-1, *[1] * (like.dim() - 1))


def _per_row_linear(module: nn.Linear, row_params: dict, x: torch.Tensor) -> torch.Tensor:
    """``module``'s forward on x (B, T, in) with a weight (B, out, in) and/or bias (B, out) per row."""
    weight = row_params.get("weight")
    out = F.linear(x, module.weight) if weight is None else x @ weight.transpose(-1, -2)
    bias = row_params.get("bias", module.bias)
    if bias is not None:
        out = out + (bias[:, None] if "bias" in row_params else bias)
    return out


@contextmanager
def per_row_weights(model: nn.Module, weights: dict[str, torch.Tensor]):
    """Within the block, ``model`` computes batch row b with ``weights[name][b]`` for every named
    parameter: an ``nn.Linear`` layer (every CMS level) row by row, in one batched matmul; any other
    parameter (embeddings, norms: dynamic evaluation of a whole model) only for a batch of one,
    substituted with its tied copies."""
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    whole: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        module_name, _, attr = name.rpartition(".")
        if isinstance(model.get_submodule(module_name), nn.Linear) and attr in ("weight", "bias"):
            by_module.setdefault(module_name, {})[attr] = tensor
        elif tensor.shape[0] != 1:
            raise ValueError(f"fast weight {name} is not of an nn.Linear layer, so it is read one row at a time; "
                             f"got a batch of {tensor.shape[0]}")
        else:
            whole[name] = tensor[0]
    patched = []
    try:
        with _reparametrize_module(model, whole, tie_weights=True):
            for module_name, row_params in by_module.items():
                module = model.get_submodule(module_name)
                module.forward = partial(_per_row_linear, module, row_params)
                patched.append(module)
            yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


def cache_rows(cache, rows: torch.Tensor, length: int | None = None):
    """A new cache with only the batch ``rows`` of ``cache``, which stays as it was; with ``length``,
    only the first ``length`` positions, the rest being padding in every row kept. The cache's own
    ``batch_select_indices`` and ``crop`` (HopeCache: ``drop_padding_after``) bind new tensors, so
    they act on a shallow copy of the cache and its layers."""
    if cache is None:
        return None
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(rows)
    if length is not None:
        if isinstance(selected, HopeCache):
            selected.drop_padding_after(length)
        elif selected.get_seq_length() > length:
            selected.crop(length - selected.get_seq_length())
    return selected
