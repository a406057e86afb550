"""Dynamic evaluation (Krause et al. 2018, "Dynamic Evaluation of Neural Sequence Models"; 2019,
"Dynamic Evaluation of Transformer Language Models"): the baseline that learning while reading is
measured against. After every segment read, each chosen parameter theta takes the step

    theta <- theta - lr * g / (rms + eps) + decay * rate * (theta_0 - theta)

with g the gradient of the segment's mean next-token loss, rms the root mean square of the
parameter's gradient over training batches (``gradient_statistics``), theta_0 the parameter before
reading, and rate = rms / (the mean over parameter tensors of mean(rms)), clipped at 1 / decay:
weights with large gradients on training data are pulled back harder.

``DynamicEvaluation`` reads with ``InContextLearner``'s loop (segments, cache, the same loss per
segment), one group of fast weights stepping after every segment, so its losses compare one to
one with the CMS rules'.

    statistics = gradient_statistics(model, training_blocks, parameter_names(model, "mlp"))
    reader = DynamicEvaluation(model, statistics, lr=1e-5, decay=0.02, segment_size=128)
    [state] = reader.read(document_ids)
"""

import torch
from torch import nn

from ..optim.cms_levels import CMSLevel, is_cms_module
from .in_context import InContextLearner

PARAMETER_SETS = ("all", "mlp")


def parameter_names(model: nn.Module, which: str) -> list[str]:
    """The parameters that dynamic evaluation updates: "all" of them, or "mlp": those of every CMS
    module (Hope's levels; Llama-CMS's pretrained MLP and new levels) or module named ``mlp``."""
    if which not in PARAMETER_SETS:
        raise ValueError(f"which must be one of {PARAMETER_SETS}, got {which!r}")
    if which == "all":
        return [name for name, _ in model.named_parameters()]
    mlps = [name for name, m in model.named_modules() if is_cms_module(m) or name.rpartition(".")[2] == "mlp"]
    if not mlps:
        raise ValueError(f"{type(model).__name__} has no CMS module or module named mlp")
    return [name for name, _ in model.named_parameters() if any(name.startswith(prefix + ".") for prefix in mlps)]


def gradient_statistics(model: nn.Module, blocks: torch.Tensor, names: list[str], batch_size: int = 4) -> dict:
    """{name: rms}: the root mean square over batches of ``blocks`` (N, T), training text, of the
    gradient of each named parameter of the batch's mean next-token loss."""
    if blocks.dim() != 2 or len(blocks) == 0:
        raise ValueError(f"blocks must be a non-empty (N, T) tensor of token ids, got shape {tuple(blocks.shape)}")
    params = dict(model.named_parameters())
    unknown = [name for name in names if name not in params]
    if unknown:
        raise ValueError(f"not parameters of {type(model).__name__}: {unknown[:3]}")
    frozen = [params[name] for name in names if not params[name].requires_grad]
    for p in frozen:  # a gradient is taken with respect to every named parameter, trainable or not
        p.requires_grad_(True)
    # accumulated in fp32 at least; returned in each parameter's dtype
    squares = {name: torch.zeros_like(params[name], dtype=torch.promote_types(params[name].dtype, torch.float32))
               for name in names}
    batches = torch.split(blocks, batch_size)
    try:
        for batch in batches:
            with torch.enable_grad():
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                grads = torch.autograd.grad(loss, [params[name] for name in names], allow_unused=True)
            for name, g in zip(names, grads):
                if g is not None:
                    squares[name] += g.to(squares[name].dtype) ** 2
    finally:
        for p in frozen:
            p.requires_grad_(False)
    return {name: (s / len(batches)).sqrt().to(params[name].dtype) for name, s in squares.items()}


class DynamicEvaluation(InContextLearner):
    rules = ("dynamic",)

    def __init__(self, model: nn.Module, statistics: dict, lr: float, decay: float = 0.0, segment_size: int = 128,
                 eps: float = 2e-5):
        """
        Args:
            model: any causal LM (its parameters are never changed).
            statistics: ``gradient_statistics``' rms of every parameter to update; their names choose them.
            lr: the step's rate (eta).
            decay: the pull toward the original weights (lambda), in [0, 1).
            segment_size: tokens read per forward, one step after each.
            eps: added to rms (Krause et al.'s default).
        """
        if not statistics:
            raise ValueError("statistics must name at least one parameter (gradient_statistics)")
        self.statistics = statistics
        super().__init__(model, lr=lr, segment_size=segment_size, rule="dynamic", periods=None, max_grad_norm=None,
                         decay=decay, eps=eps, statistics=statistics)
        scale = torch.stack([rms.mean() for rms in statistics.values()]).mean()
        limit = 1.0 / self.decay if self.decay else float("inf")
        self.decay_rates = {name: (rms / scale).clamp(max=limit) for name, rms in statistics.items()}

    def _find_levels(self, periods) -> list[CMSLevel]:
        params = dict(self.model.named_parameters())
        unknown = [name for name in self.statistics if name not in params]
        if unknown:
            raise ValueError(f"statistics names {unknown[:3]}, not parameters of {type(self.model).__name__}")
        return [CMSLevel("dynamic evaluation", 0, 1, "sequential", [(name, params[name]) for name in self.statistics])]

    def _steps(self, level, mean_grads: dict, batch) -> dict:
        steps = {}
        for name, g in mean_grads.items():
            weight, original = batch.fast_weights[name], self.model.get_parameter(name).detach()
            steps[name] = (self.lrs[0] * g / (self.statistics[name] + self.eps)
                           - self.decay * self.decay_rates[name] * (original - weight))
        return steps

    def _decayed(self, name: str, weight: torch.Tensor, initial: dict) -> torch.Tensor:
        return weight  # the pull back is part of the step


__all__ = ["DynamicEvaluation", "PARAMETER_SETS", "gradient_statistics", "parameter_names"]
