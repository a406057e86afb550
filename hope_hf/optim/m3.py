"""M3: Multi-scale Momentum Muon (Nested Learning, Algorithm 1, generalised to k levels).

For every matrix parameter, k momentum levels; level l has a period f_l (steps), an input rate
beta_l, a decay mu_l and a weight w_l. Between its pulses a level sums the gradients; at a pulse
(Eq 71 applied to the optimizer's own memory):
    M_l <- mu_l * M_l + beta_l * (sum of the chunk's gradients),   O_l <- NewtonSchulz(M_l)
Every step:  V <- V + beta_v * g^2 (Algorithm 1's second momentum, variance="sum"), or
             V <- beta_v * V + (1 - beta_v) * g^2, bias-corrected (Adam's, variance="ema"),
             theta <- theta * (1 - lr * wd) - lr * (sum_l w_l O_l) / (sqrt(V) + eps)
or, with variance="none", theta <- theta * (1 - lr * wd) - lr * sum_l w_l O_l (Muon's step on the
levels' momenta).
Algorithm 1 is k=2: level 1 (f=1, beta_1, w=1) and level 2 (f, beta_3, w=alpha), mu = 1, with
variance="sum" (``M3(params, variance="sum", momentum_decay=1.0, ...)``); the defaults instead take
Adam's moving average and mu = 0.95, which measured better (docs/training.md, "M3 optimizer").
With k=1 and variance="sum" it reduces to Muon on an accumulated momentum, normalised by an
AdaGrad-style sqrt(V). Embeddings, the LM head and 1-D parameters go to an AdamW group of the
same optimizer (its own lr, M3's eps).
"""

import torch
from torch import nn

VARIANCE_RULES = ("sum", "ema", "none")
# Muon's quintic Newton-Schulz coefficients
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise a 2-D matrix (singular values pushed towards 1), in bf16 on
    GPU and fp32 elsewhere; returned in the input's dtype."""
    if matrix.dim() != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(torch.bfloat16 if matrix.is_cuda else torch.float32)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.T
    return x.to(matrix.dtype)


def _check(name: str, value, low: float, high: float | None = None, low_open: bool = False) -> None:
    ok = (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"({low}, " if low_open else f"[{low}, "
        raise ValueError(f"{name} must be in {bound}{high if high is not None else 'inf'}), got {value!r}")


class M3(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-6,
        levels: list[dict] | None = None,
        slow_period: int = 8,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9),
        alpha: float = 1.0,
        momentum_decay: float = 0.95,
        eps: float = 1e-5,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        variance: str = "ema",
        adamw_lr: float = 3e-3,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_weight_decay: float = 0.0,
    ):
        """
        Args:
            params: parameters or param groups; a group with ``"algorithm": "adamw"`` is AdamW
                (its lr / weight_decay default to adamw_lr / adamw_weight_decay), every other group
                is M3 (its tensors must be 2-D). ``M3.from_model`` splits a model. Every group's
                "lr" is what LR schedulers scale.
            lr: the matrices' rate. It multiplies O / (sqrt(V) + eps), not O alone, so its scale
                depends on the variance rule: the defaults (lr 1e-6, eps 1e-5, "ema", decay 0.95)
                are the best M3 setting measured on Hope at two widths (docs/training.md); with
                variance="none" rates are Muon's (~1e-3).
            levels: momentum levels [{"period", "beta", "weight", "decay"}]; default Algorithm 1's two:
                [{"period": 1, "beta": betas[0], "weight": 1, "decay": momentum_decay},
                 {"period": slow_period, "beta": betas[2], "weight": alpha, "decay": momentum_decay}].
            betas: (beta_1, beta_2, beta_3) of Algorithm 1; beta_2 feeds the variance V.
            momentum_decay: mu of the default levels; 1.0 is Algorithm 1 (momenta sum every
                gradient), 0.95 lets old gradients fade.
            variance: "sum" (Algorithm 1: V accumulates beta_2 * g^2 over all steps, so steps
                shrink as training goes on), "ema" (Adam's bias-corrected moving average with
                rate beta_2) or "none" (no second moment: the orthogonalised momenta are the step,
                as in Muon; eps is unused).
            eps: bounds the per-element step to lr * |O| / eps (the AdamW groups use it too).
                The orthogonalised update is dense while V is ~0 wherever gradients are (e.g.
                dead ReLUs), so Algorithm 1 with Adam's eps=1e-8 can diverge (docs/training.md,
                "M3 optimizer").
        """
        _check("lr", lr, 0.0)
        _check("eps", eps, 0.0, low_open=True)
        _check("ns_steps", ns_steps, 1)
        if variance not in VARIANCE_RULES:
            raise ValueError(f"variance must be one of {VARIANCE_RULES}, got {variance!r}")
        for i, beta in enumerate(betas):
            _check(f"betas[{i}]", beta, 0.0, 1.0)
        if levels is None:
            _check("slow_period", slow_period, 1)
            _check("momentum_decay", momentum_decay, 0.0, 1.0 + 1e-12)
            levels = [{"period": 1, "beta": betas[0], "weight": 1.0, "decay": momentum_decay},
                      {"period": slow_period, "beta": betas[2], "weight": alpha, "decay": momentum_decay}]
        for i, level in enumerate(levels):
            if isinstance(level.get("period"), bool) or not isinstance(level.get("period"), int):
                raise ValueError(f"levels[{i}]['period'] must be an int >= 1, got {level.get('period')!r}")
            _check(f"levels[{i}]['period']", level["period"], 1)
            _check(f"levels[{i}]['beta']", level["beta"], 0.0, 1.0)
            _check(f"levels[{i}]['decay']", level.get("decay", 1.0), 0.0, 1.0 + 1e-12)
        _check("adamw_lr", adamw_lr, 0.0)
        params = list(params)
        if params and isinstance(params[0], dict):  # AdamW groups take adamw_lr / adamw_weight_decay unless set
            params = [{"lr": adamw_lr, "weight_decay": adamw_weight_decay, **g} if g.get("algorithm") == "adamw" else g
                      for g in params]
        defaults = dict(lr=lr, levels=[dict(lv) for lv in levels], beta_v=betas[1], eps=eps, weight_decay=weight_decay,
                        ns_steps=ns_steps, variance=variance, algorithm="m3", adamw_betas=adamw_betas)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["algorithm"] == "m3":
                for p in group["params"]:
                    if p.dim() != 2:
                        raise ValueError(f"M3 groups take 2-D matrices only, got shape {tuple(p.shape)}; put it in an adamw group")

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs) -> "M3":
        """Hidden matrices to M3; embeddings, the LM head and 1-D parameters to AdamW."""
        skip = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        if hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None:
            skip |= {id(p) for p in model.get_output_embeddings().parameters()}
        matrices, others = [], []
        for p in model.parameters():
            if p.requires_grad:
                (matrices if p.dim() == 2 and id(p) not in skip else others).append(p)
        return cls([{"params": matrices}, {"params": others, "algorithm": "adamw"}], **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["algorithm"] == "adamw":
                    self._adamw(p, group)
                else:
                    self._m3(p, group)
        return loss

    def _m3(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad.float()
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["variance"] = torch.zeros_like(grad)  # unused with variance="none"
            for l, level in enumerate(group["levels"]):
                state[f"momentum_{l}"] = torch.zeros_like(grad)
                state[f"orthogonal_{l}"] = torch.zeros_like(grad)
                if level["period"] > 1:
                    state[f"held_{l}"] = torch.zeros_like(grad)
        state["step"] += 1
        beta_v, rule = group["beta_v"], group.get("variance", "sum")
        if rule == "ema":
            state["variance"].mul_(beta_v).addcmul_(grad, grad, value=1 - beta_v)
            variance = state["variance"] / (1 - beta_v ** state["step"])
        elif rule == "sum":
            variance = state["variance"].addcmul_(grad, grad, value=beta_v)
        update = torch.zeros_like(grad)
        for l, level in enumerate(group["levels"]):
            if level["period"] > 1:
                state[f"held_{l}"].add_(grad)
            if state["step"] % level["period"] == 0:  # this level's pulse (Eq 71)
                chunk_sum = state[f"held_{l}"] if level["period"] > 1 else grad
                momentum = state[f"momentum_{l}"]
                momentum.mul_(level.get("decay", 1.0)).add_(chunk_sum, alpha=level["beta"])
                state[f"orthogonal_{l}"] = newton_schulz(momentum, group["ns_steps"])
                if level["period"] > 1:
                    state[f"held_{l}"].zero_()
            update.add_(state[f"orthogonal_{l}"], alpha=level["weight"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        if rule != "none":
            update = update / (variance.sqrt() + group["eps"])
        p.add_(update.to(p.dtype), alpha=-group["lr"])

    def _adamw(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad.float()
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        state["step"] += 1
        beta1, beta2 = group["adamw_betas"]
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = state["exp_avg"] / (1 - beta1 ** state["step"])
        v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_((m_hat / (v_hat.sqrt() + group["eps"])).to(p.dtype), alpha=-group["lr"])
