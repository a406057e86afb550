import torch

from .chunk import chunk_self_referential_gated_delta_rule, use_compiled_chunks
from .fla_bridge import fla_self_referential_gated_delta_rule
from .naive import naive_self_referential_gated_delta_rule
from .common import state_width

__all__ = [
    "chunk_self_referential_gated_delta_rule",
    "fla_self_referential_gated_delta_rule",
    "naive_self_referential_gated_delta_rule",
    "self_referential_gated_delta_rule",
    "state_width",
    "use_compiled_chunks",
]


def _cuda_kernel(head_dim: int, chunk_size: int, self_referential: bool):
    from .fused_chunk import fused_chunk_self_referential_gated_delta_rule, fused_kernel_supports  # imports triton

    if self_referential and fused_kernel_supports(head_dim, chunk_size):
        return fused_chunk_self_referential_gated_delta_rule
    return fla_self_referential_gated_delta_rule


def _varlen(kernel, u, q, b_eta, b_alpha, initial_state, chunk_size, eta_max, initial_chunk_state, chunk_offset,
            attention_mask, self_referential, detach_values, row_ends, cu_seqlens, **extra):
    """``kernel`` on sequences packed into one row (``cu_seqlens``): each sequence becomes a row of a
    right-padded batch (its own chunk grid from its start, its own states, ``row_ends`` its length),
    and the outputs go back to the packed positions."""
    if u.shape[0] != 1:
        raise ValueError(f"with cu_seqlens, u must hold one packed row (batch 1), got batch {u.shape[0]}")
    if attention_mask is not None or row_ends is not None or chunk_offset != 0:
        raise ValueError("cu_seqlens takes no attention_mask, row_ends or chunk_offset: every sequence starts at "
                         "its first token")
    T = u.shape[1]
    if (cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T
            or bool((cu_seqlens[1:] <= cu_seqlens[:-1]).any())):
        raise ValueError(f"cu_seqlens must increase strictly from 0 to seq_len={T}, got {cu_seqlens.tolist()}")
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(u.device)
    N, L = lengths.numel(), int(lengths.max())
    for name, state in (("initial_state", initial_state), ("initial_chunk_state", initial_chunk_state)):
        if state is not None and state.shape[0] != N:
            raise ValueError(f"{name} must hold one state per sequence ({N}), got {state.shape[0]}")
    j = torch.arange(L, device=u.device)[None, :]
    valid = j < lengths[:, None]  # (N, L)
    source = (cu_seqlens[:-1].to(u.device)[:, None] + j).clamp(max=T - 1)
    rows = lambda x: None if x is None else x[0][source] * valid[..., None, None].to(x.dtype)  # noqa: E731
    o, state, chunk_state = kernel(
        rows(u), rows(q), b_eta, b_alpha, initial_state, chunk_size, eta_max, initial_chunk_state, 0, valid,
        self_referential, detach_values, row_ends=lengths, **{**extra, **({"v": rows(extra["v"])} if "v" in extra else {})},
    )
    packed = o.new_zeros(T, *o.shape[2:]).index_put((source[valid],), o[valid])
    return packed[None], state, chunk_state


def self_referential_gated_delta_rule(
    u, q, b_eta, b_alpha, initial_state, chunk_size, eta_max=1.0, initial_chunk_state=None,
    chunk_offset=0, attention_mask=None, self_referential=True, detach_values=False, row_ends=None, *, v=None,
    normalize_values=True, cu_seqlens=None,
):
    """Self-referential gated delta rule (Eq 83-93 of Nested Learning; docs/design.md, "The op's contract").

    Args:
        u, q: (B, T, H, d) memory input and query, each l2-normalised per head.
        b_eta, b_alpha: (H,) biases of the learning rate and decay (outside the memories).
        initial_state: (B, H, d, 3d+2) running state; the meta-learned initial memories
            expanded over the batch, or a cached state.
        chunk_size: tokens per chunk; projections use the state at the chunk's start.
        eta_max: upper bound of the learning rate eta = eta_max * sigmoid(.).
        initial_chunk_state: (B, H, d, 3d+2) state the first chunk projects from; defaults to
            ``initial_state``. With ``self_referential=False`` every chunk projects from it.
        chunk_offset: position of the first token inside its chunk (to continue a sequence).
        attention_mask: (B, T), 0 marks padding; padded tokens leave the state untouched.
        detach_values: stop-gradient on the self-generated values.
        row_ends: (B,) or None; row b holds only padding from position row_ends[b] on. A chunk
            boundary at position x then moves row b's chunk-start state to its running state
            only if x <= row_ends[b], so the row keeps the chunk-start state it has alone across
            its trailing padding (the titans mixer aligns the rows of a ragged batch to their
            own chunk phases), and the CPU path skips a row's chunks of padding.
        v (keyword): (B, T, H, d) the value memory's own input, or None (Eq 90: u feeds every
            memory). With it, v = M_v(v_input) while keys, rates and decays still come from u.
        normalize_values (keyword): l2-normalise the values v (default); False leaves them as
            the value memory produced them.
        cu_seqlens (keyword): (N+1,) int, fla's convention: N sequences packed into one row
            (B = 1), sequence n at positions cu_seqlens[n] .. cu_seqlens[n+1]-1. Each starts from
            its own initial_state (N, H, d, 3d+2) with a chunk grid from its first token; the
            returned states are one per sequence (N, ...). No attention_mask, row_ends or
            chunk_offset with it.

    Returns:
        o (B, T, H, d) in the dtype of ``u``; final running state and the chunk-start state
        for the next token, both (B, H, d, 3d+2) in fp32 (or fp64).

    The path follows the tensors' device. On CUDA: the fused Triton kernels of ``fused_chunk.py``
    when the shapes fit them (self-referential, head_dim and chunk_size in 16/32/64), otherwise fla's Triton kernels (one call per chunk, or one call for the whole sequence
    with ``self_referential=False``). Elsewhere: chunked torch.
    """
    kernel = _cuda_kernel(u.shape[-1], chunk_size, self_referential) if u.is_cuda else chunk_self_referential_gated_delta_rule
    extra = {}
    if row_ends is not None:
        extra["row_ends"] = row_ends
    if v is not None or not normalize_values:
        extra.update(v=v, normalize_values=normalize_values)
    if (extra or cu_seqlens is not None) and u.is_cuda:  # the fused kernels take none of these
        kernel = fla_self_referential_gated_delta_rule
    with torch.autocast(u.device.type, enabled=False):  # the recurrence runs in its compute dtype, autocast or not
        if cu_seqlens is not None:
            return _varlen(kernel, u, q, b_eta, b_alpha, initial_state, chunk_size, eta_max, initial_chunk_state,
                           chunk_offset, attention_mask, self_referential, detach_values, row_ends, cu_seqlens,
                           **{k: x for k, x in extra.items() if k != "row_ends"})
        return kernel(
            u, q, b_eta, b_alpha, initial_state, chunk_size, eta_max, initial_chunk_state,
            chunk_offset, attention_mask, self_referential, detach_values, **extra,
        )
