"""Chunk-parallel path of the self-referential memory with a two-layer main memory (Titans
Section 3.2). W1's per-token gradients are taken at the chunk's start weights, so its updates are
sums of per-token terms and its reads are matrix products. With gamma_t = prod_{s<=t} alpha_s
inside the chunk, W1_r the running weights at its start and D_ts = (gamma_t / gamma_s) eta_s / C
for s <= t:

    q_t W1_t = gamma_t q_t W1_r - sum_s D_ts (q_t . k_s) g_s          (grad_W1 l_s = k_s^T g_s)
    z_t = n(silu(q_t W1_t))
    o_t = q_t + z_t W2_t

W2 learns by the gated delta rule with keys a_s (the chunk-start hidden activations of k_s) and
targets vhat_s - k_s, solved in parallel by ``delta_rule_chunk`` with z_t as the queries. The
linear memories run through ``delta_rule_chunk`` too. Backward is autograd's.
"""

import torch

from ..self_referential.chunk import delta_rule_chunk
from ..self_referential.common import follow_boundary, head_first, memory_targets, project
from .common import (check_deep_inputs, hidden_activation, join_state, memory_gradients, self_generated_value,
                     split_state)


def deep_memory_chunk(q, k, values, eta, alpha, running, chunk_start, chunk_size, detach_values=False):
    """One chunk of the main memory. q, k, values: (B, H, L, d); eta, alpha: (B, H, L);
    running, chunk_start: (W1, W2) pairs, each (B, H, d, d). Returns o (B, H, L, d) and the
    running (W1, W2) after the chunk."""
    L = q.shape[-2]
    target = self_generated_value(values, *chunk_start)
    if detach_values:
        target = target.detach()
    hidden, _, g = memory_gradients(k, target, *chunk_start)
    log_gamma = torch.log(alpha).cumsum(-1)  # (B, H, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    D = torch.exp((log_gamma[..., :, None] - log_gamma[..., None, :]).masked_fill(~causal, float("-inf")))
    step = eta / chunk_size  # the chunk's mean gradient, not its sum: see common.py
    D = D * step[..., None, :]  # (B, H, L, L): (gamma_t / gamma_s) eta_s / C for s <= t
    w1, w2 = running
    z = hidden_activation(log_gamma.exp()[..., None] * (q @ w1) - (D * (q @ k.transpose(-1, -2))) @ g)
    read, w2 = delta_rule_chunk(z, hidden, target - k, eta, alpha, w2, read_columns=slice(None))
    to_end = (torch.exp(log_gamma[..., -1:] - log_gamma) * step)[..., None]  # (gamma_L / gamma_s) eta_s / C
    w1 = log_gamma[..., -1].exp()[..., None, None] * w1 - k.transpose(-1, -2) @ (to_end * g)
    return q + read, (w1, w2)


def chunk_deep_self_referential_rule(
    u: torch.Tensor,
    q: torch.Tensor,
    b_eta: torch.Tensor,
    b_alpha: torch.Tensor,
    initial_state: torch.Tensor,
    chunk_size: int,
    eta_max: float = 1.0,
    initial_chunk_state: torch.Tensor | None = None,
    chunk_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    self_referential: bool = True,
    detach_values: bool = False,
    row_ends: torch.Tensor | None = None,
    *,
    v: torch.Tensor | None = None,
    normalize_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See ``naive_deep_self_referential_rule``; the same results, a chunk at a time."""
    check_deep_inputs(u, q, b_eta, b_alpha, initial_state, initial_chunk_state, attention_mask, chunk_size,
                      chunk_offset, v, self_referential)
    in_dtype = u.dtype
    u, q, value_input, b_eta, b_alpha, state, chunk_state = head_first(
        u, q, v, b_eta, b_alpha, initial_state, initial_chunk_state)  # (B, H, T, d)
    T = u.shape[2]
    starts = [0, *range(chunk_size - chunk_offset, T, chunk_size)]
    outputs = []
    for start, end in zip(starts, [*starts[1:], T]):
        if start > 0:
            chunk_state = follow_boundary(row_ends, start, state, chunk_state)
        linear_c, *deep_c = split_state(chunk_state)
        linear, *deep = split_state(state)
        mask = None if attention_mask is None else attention_mask[:, start:end]
        v_chunk = None if value_input is None else value_input[:, :, start:end]
        k, values, eta, alpha = project(u[:, :, start:end], linear_c, b_eta, b_alpha, eta_max, mask, v_chunk,
                                        normalize_values)
        w = memory_targets(k, values, linear_c, detach_values)  # its main-memory block unused
        q_chunk = q[:, :, start:end]
        _, linear = delta_rule_chunk(q_chunk, k, w, eta, alpha, linear)
        o, deep = deep_memory_chunk(q_chunk, k, values, eta, alpha, deep, deep_c, chunk_size, detach_values)
        state = join_state(linear, *deep)
        outputs.append(o)
    o = torch.cat(outputs, dim=2).transpose(1, 2)

    if (chunk_offset + T) % chunk_size == 0:
        chunk_state = follow_boundary(row_ends, T, state, chunk_state)
    return o.to(in_dtype), state, chunk_state
