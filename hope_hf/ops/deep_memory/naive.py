"""Token-by-token reference of the self-referential memory with a two-layer main memory.
Written for reading (the math is in ``common.py``).

For each token t, with S_c the state at the start of t's chunk:
    k, v, eta, alpha = projections of u_t by the linear memories in S_c (as the linear op)
    linear memories:  S_t = (alpha_t I - eta_t k_t k_t^T) S_{t-1} + eta_t k_t w_t^T
    main memory:      W1_t = alpha_t W1_{t-1} - (eta_t / C) grad_W1 l_t(W1_c, W2_c),  vhat_t = n(M_{W_c}(v_t))
                      W2_t = alpha_t W2_{t-1} - eta_t grad_W2 l_t(W1_c, W2_{t-1})  (a delta rule)
    o_t = M_{W_t}(q_t)
"""

import torch

from ..self_referential.common import follow_boundary, head_first, memory_targets, project
from .common import check_deep_inputs, join_state, memory_gradients, mlp_memory, self_generated_value, split_state


def naive_deep_self_referential_rule(
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
    """The arguments of ``hope_hf.ops.self_referential_gated_delta_rule``; states (B, H, d, 4d+2)."""
    check_deep_inputs(u, q, b_eta, b_alpha, initial_state, initial_chunk_state, attention_mask, chunk_size,
                      chunk_offset, v, self_referential)
    in_dtype = u.dtype
    u, q, value_input, b_eta, b_alpha, state, chunk_state = head_first(
        u, q, v, b_eta, b_alpha, initial_state, initial_chunk_state)  # (B, H, T, d)
    T = u.shape[2]
    outputs = []
    for t in range(T):
        if t > 0 and (chunk_offset + t) % chunk_size == 0:
            chunk_state = follow_boundary(row_ends, t, state, chunk_state)
        linear_c, w1_c, w2_c = split_state(chunk_state)
        linear, w1, w2 = split_state(state)
        u_t, q_t = u[:, :, t : t + 1], q[:, :, t : t + 1]  # (B, H, 1, d)
        mask_t = None if attention_mask is None else attention_mask[:, t : t + 1]
        v_t = None if value_input is None else value_input[:, :, t : t + 1]
        k, values, eta, alpha = project(u_t, linear_c, b_eta, b_alpha, eta_max, mask_t, v_t, normalize_values)
        eta, alpha = eta[..., None], alpha[..., None]  # (B, H, 1, 1)
        k_col = k.transpose(-1, -2)  # (B, H, d, 1)

        w = memory_targets(k, values, linear_c, detach_values)  # (B, H, 1, 3d+2); its main-memory block unused
        linear = alpha * linear - eta * k_col @ (k @ linear) + eta * k_col @ w

        target = self_generated_value(values, w1_c, w2_c)
        if detach_values:
            target = target.detach()
        hidden, _, g = memory_gradients(k, target, w1_c, w2_c)
        w1 = alpha * w1 - (eta / chunk_size) * k_col @ g  # the chunk's mean gradient: see common.py
        error = k + hidden @ w2 - target  # at the current W2
        w2 = alpha * w2 - eta * hidden.transpose(-1, -2) @ error

        state = join_state(linear, w1, w2)
        outputs.append(mlp_memory(q_t, w1, w2))
    o = torch.cat(outputs, dim=2).transpose(1, 2)

    if (chunk_offset + T) % chunk_size == 0:
        chunk_state = follow_boundary(row_ends, T, state, chunk_state)
    return o.to(in_dtype), state, chunk_state
