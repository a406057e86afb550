"""Shared math of the self-referential memory whose main memory is a two-layer MLP (Titans
Section 3.1; Nested Learning Eq 83-93 with M_mem deep).

The key, value, learning-rate and decay memories stay linear and learn by the delta rule exactly
as in ``hope_hf.ops.self_referential``. The main memory reads

    M(x) = x + n(silu(x W1)) W2,        W1: (d, h), W2: (h, d), h = d, n(z) = z / |z|,

and learns by gradient steps on l_t(W) = 1/2 |M_W(k_t) - vhat_t|^2, vhat_t = n(M_{W_c}(v_t)) its
self-generated value, W_c the weights at the start of t's chunk (Titans Section 3.2):

    W1_t = alpha_t W1_{t-1} - (eta_t / C) grad_W1 l_t(W1_c, W2_c),    C the chunk size,
    W2_t = alpha_t W2_{t-1} - eta_t grad_W2 l_t(W1_c, W2_{t-1}).

W1's gradients are all taken at W_c, so a chunk's steps add up: divided by C, a chunk moves W1 by
at most one step of its mean gradient (with eta_t alone, a chunk of 64 overshoots and diverges).
W2's gradient is taken at the current W2 and is a gated delta rule with the unit key
a_t = n(silu(k_t W1_c)) and the target vhat_t - k_t: exact inside a chunk, solved in parallel like
the linear memories, and a contraction for eta <= 1, so one token writes its association at the
full rate eta_t (at eta_t / C, recall in MQAR failed). The output reads after the update:
o_t = M_{W_t}(q_t). The hidden activation is l2-normalised, as the keys are, for stability: M
does not depend on the scale of W1 (without it, an 8K-token input with eta near its maximum
diverges).

State layout, per head: (d, 4d + 2) = the linear op's (d, 3d + 2) columns
[W_k | W_v | W1 | w_eta | w_alpha] with W1 in the main memory's block, then W2 (rows: hidden
units). The linear delta rule runs over the first 3d + 2 columns (its update of the W1 block is
discarded), so keys, values, rates and decays are those of the linear op.
"""

import torch
import torch.nn.functional as F

from ..self_referential.common import check_inputs, memory_slices


def deep_state_width(head_dim: int) -> int:
    """Columns of the stacked state with a two-layer main memory: 3d + 2 linear, d for W2."""
    return 4 * head_dim + 2


def split_state(state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., d, 4d+2) -> the linear memories' state (..., d, 3d+2), W1 (..., d, d), W2 (..., d, d)."""
    d = state.shape[-2]
    linear = state[..., : 3 * d + 2]
    return linear, linear[..., memory_slices(d)["memory"]], state[..., 3 * d + 2 :]


def join_state(linear: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The inverse of ``split_state``: W1 replaces the main memory's block of ``linear``."""
    d = linear.shape[-2]
    return torch.cat([linear[..., : 2 * d], w1, linear[..., 3 * d :], w2], dim=-1)


_NORM_EPS = 1e-12  # F.normalize's default


def hidden_activation(pre: torch.Tensor) -> torch.Tensor:
    """n(silu(pre)), the memory's hidden layer."""
    return F.normalize(F.silu(pre), dim=-1, eps=_NORM_EPS)


def mlp_memory(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """M(x) = x + n(silu(x W1)) W2. x: (..., L, d); w1: (..., d, h); w2: (..., h, d)."""
    return x + hidden_activation(x @ w1) @ w2


def self_generated_value(v: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """vhat = n(M_{W_c}(v)): the memory's own value for v, unit-length like the keys."""
    return F.normalize(mlp_memory(v, w1, w2), dim=-1, eps=_NORM_EPS)


def silu_derivative(a: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(a)
    return s * (1 + a * (1 - s))


def memory_gradients(k, target, w1, w2):
    """Per-token pieces of grad l(W) at (W1, W2), l = 1/2 |M_W(k) - target|^2:
    grad_W1 = k^T g and grad_W2 = a^T e, with a = n(s), s = silu(k W1), the hidden activation,
    e = M_W(k) - target the error and g = ((b - a (a.b)) / |s|) * silu'(k W1), b = e W2^T
    (the gradient through the normalisation). Returns a, e, g, each (..., L, .)."""
    pre = k @ w1
    activation = F.silu(pre)
    norm = torch.linalg.vector_norm(activation, dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    hidden = activation / norm
    error = k + hidden @ w2 - target
    back = error @ w2.transpose(-1, -2)
    g = (back - hidden * (hidden * back).sum(-1, keepdim=True) * (norm > _NORM_EPS)) / norm * silu_derivative(pre)
    return hidden, error, g


def check_deep_inputs(u, q, b_eta, b_alpha, initial_state, initial_chunk_state, attention_mask, chunk_size,
                      chunk_offset, v, self_referential) -> None:
    """The linear op's checks on the linear columns, plus the deep state's width."""
    if u.dim() == 4 and initial_state.dim() == 4:
        d = u.shape[-1]
        for name, s in (("initial_state", initial_state), ("initial_chunk_state", initial_chunk_state)):
            if s is not None and s.shape[-1] != deep_state_width(d):
                raise ValueError(f"{name} must have {deep_state_width(d)} columns (4d+2: the linear memories' 3d+2 "
                                 f"and W2) with a two-layer memory, got {tuple(s.shape)}")
    if not self_referential:
        raise ValueError("a two-layer main memory needs self_referential=True: its gradients are taken at the "
                         "chunk-start weights")
    linear = lambda s: None if s is None else s[..., : 3 * u.shape[-1] + 2]  # noqa: E731
    check_inputs(u, q, b_eta, b_alpha, linear(initial_state), linear(initial_chunk_state), attention_mask,
                 chunk_size, chunk_offset, v)
