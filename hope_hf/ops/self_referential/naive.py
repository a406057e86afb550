"""Token-by-token reference of the self-referential gated delta rule. Written for reading.

For each token t (Eq 90 and 93; docs/design.md, "Self-referential Titans memory"), with S_c the
state at the start of t's chunk:
    k, v, eta, alpha = projections of u_t by the memories in S_c (v of v_t, if given)
    w_t = M(v_t) - [square ? k_t : 0]               (self-generated targets, from S_c)
    S_t = (alpha_t I - eta_t k_t k_t^T) S_{t-1} + eta_t k_t w_t^T
    o_t = q_t + q_t^T S_t[:, mem]                    (read-out after the update)
"""

import torch

from .common import check_inputs, follow_boundary, head_first, memory_slices, memory_targets, project


def naive_self_referential_gated_delta_rule(
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
    """See ``hope_hf.ops.self_referential_gated_delta_rule`` for the arguments."""
    check_inputs(u, q, b_eta, b_alpha, initial_state, initial_chunk_state, attention_mask, chunk_size, chunk_offset, v)
    in_dtype = u.dtype
    u, q, value_input, b_eta, b_alpha, state, chunk_state = head_first(
        u, q, v, b_eta, b_alpha, initial_state, initial_chunk_state)  # (B, H, T, d)
    T, d = u.shape[2], u.shape[3]
    mem = memory_slices(d)["memory"]
    outputs = []
    for t in range(T):
        if self_referential and t > 0 and (chunk_offset + t) % chunk_size == 0:
            chunk_state = follow_boundary(row_ends, t, state, chunk_state)
        u_t, q_t = u[:, :, t : t + 1], q[:, :, t : t + 1]  # (B, H, 1, d)
        mask_t = None if attention_mask is None else attention_mask[:, t : t + 1]
        v_t = None if value_input is None else value_input[:, :, t : t + 1]
        k, values, eta, alpha = project(u_t, chunk_state, b_eta, b_alpha, eta_max, mask_t, v_t, normalize_values)
        w = memory_targets(k, values, chunk_state, detach_values)  # (B, H, 1, 3d+2)
        eta, alpha = eta[..., None], alpha[..., None]  # (B, H, 1, 1)
        k_col = k.transpose(-1, -2)  # (B, H, d, 1)
        state = alpha * state - eta * k_col @ (k @ state) + eta * k_col @ w
        outputs.append(q_t + q_t @ state[..., mem])
    o = torch.cat(outputs, dim=2).transpose(1, 2)

    ends_on_boundary = (chunk_offset + T) % chunk_size == 0
    if self_referential and ends_on_boundary:
        chunk_state = follow_boundary(row_ends, T, state, chunk_state)
    return o.to(in_dtype), state, chunk_state
