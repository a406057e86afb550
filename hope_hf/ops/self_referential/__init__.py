import inspect

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


def _pick_kernel(cuda: bool, head_dim: int, chunk_size: int, self_referential: bool, value_options: bool,
                 varlen: bool, output_final_state: bool, memory_depth: int):
    """The path for these inputs (docs/design.md, "The op's contract")."""
    if memory_depth == 2:
        from ..deep_memory import chunk_deep_self_referential_rule  # it builds on this package

        return chunk_deep_self_referential_rule
    if not cuda:
        return chunk_self_referential_gated_delta_rule
    # The fused kernels take no value options and no row_ends: with cu_seqlens they give the outputs and
    # the running state exactly, but a sequence's chunk-start state only through the fla bridge's row_ends.
    if value_options or (varlen and output_final_state):
        return fla_self_referential_gated_delta_rule
    return _cuda_kernel(head_dim, chunk_size, self_referential)


def _split_state(initial_state, name="initial_state"):
    """(N, H, d, W) -> (running, None); (N, H, 2, d, W) -> (running, chunk-start), as returned."""
    if initial_state.dim() == 5:
        if initial_state.shape[2] != 2:
            raise ValueError(f"{name} of 5 dims must be (N, H, 2, d, 3d+2) = (running, chunk-start state), "
                             f"got {tuple(initial_state.shape)}")
        return initial_state[:, :, 0], initial_state[:, :, 1]
    return initial_state, None


def _varlen(kernel, u, q, b_eta, b_alpha, state, chunk_state, chunk_size, eta_max, chunk_offset, cu_seqlens,
            v=None, **options):
    """``kernel`` on sequences packed into one row (``cu_seqlens``). Sequence n becomes row n of a
    right-padded batch, its first token at position chunk_offset[n] so that its chunk grid is its
    own; ``row_ends``, for the kernels that take it, keeps its chunk-start state across its
    trailing padding (and lets the CPU path skip chunks of padding). The outputs go back to the
    packed positions."""
    if u.shape[0] != 1:
        raise ValueError(f"with cu_seqlens, u must hold one packed row (batch 1), got batch {u.shape[0]}")
    T = u.shape[1]
    if (cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T
            or bool((cu_seqlens[1:] <= cu_seqlens[:-1]).any())):
        raise ValueError(f"cu_seqlens must increase strictly from 0 to seq_len={T}, got {cu_seqlens.tolist()}")
    cu_seqlens = cu_seqlens.to(u.device)
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    N = lengths.numel()
    for name, s in (("initial_state", state), ("initial_chunk_state", chunk_state)):
        if s is not None and s.shape[0] != N:
            raise ValueError(f"{name} must hold one state per sequence ({N}), got {s.shape[0]}")
    phase = torch.as_tensor(chunk_offset, device=u.device).long().expand(N)
    if bool(((phase < 0) | (phase >= chunk_size)).any()):
        raise ValueError(f"chunk_offset must be in [0, chunk_size={chunk_size}), got {phase.tolist()}")
    ends = phase + lengths
    p = torch.arange(int(ends.max()), device=u.device)[None, :]
    valid = (p >= phase[:, None]) & (p < ends[:, None])  # (N, L)
    source = (cu_seqlens[:-1, None] + p - phase[:, None]).clamp(0, T - 1)
    rows = lambda x: None if x is None else x[0][source] * valid[..., None, None].to(x.dtype)  # noqa: E731
    if "row_ends" in inspect.signature(kernel).parameters:  # the fused kernels take none (see _pick_kernel)
        options["row_ends"] = ends
    o, state, chunk_state = kernel(
        rows(u), rows(q), b_eta, b_alpha, state, chunk_size, eta_max, chunk_state, 0, valid,
        **({} if v is None else {"v": rows(v)}), **options,
    )
    packed = o.new_zeros(T, *o.shape[2:]).index_put((source[valid],), o[valid])
    return packed[None], state, chunk_state


def self_referential_gated_delta_rule(
    u, q, b_eta, b_alpha, *, initial_state=None, chunk_size=64, eta_max=1.0, v=None, normalize_values=True,
    self_referential=True, detach_values=False, chunk_offset=0, attention_mask=None, cu_seqlens=None,
    output_final_state=False, memory_depth=1,
):
    """Self-referential gated delta rule (Eq 83-93 of Nested Learning; docs/design.md, "The op's contract").

    Args:
        u, q: (B, T, H, d) memory input and query, each l2-normalised per head.
        b_eta, b_alpha: (H,) biases of the learning rate and decay (outside the memories).
        initial_state: the memories each sequence starts from: (N, H, d, 3d+2), the meta-learned
            initial memories expanded over the sequences, or (N, H, 2, d, 3d+2) = (running state,
            state at the start of the current chunk) as a previous call returned it. None: zeros.
            N = B, or the number of sequences with ``cu_seqlens``.
        chunk_size: tokens per chunk; projections use the state at the chunk's start (Eq 90).
        eta_max: upper bound of the learning rate eta = eta_max * sigmoid(.).
        v: (B, T, H, d) the value memory's own input, or None (Eq 90: u feeds every memory).
            With it, v = M_v(v) while keys, rates and decays still come from u.
        normalize_values: l2-normalise the values (default); False leaves them as the value
            memory produced them.
        self_referential: False projects every chunk from the initial chunk-start state.
        detach_values: stop-gradient on the self-generated values.
        chunk_offset: position of each sequence's first token inside its chunk, to continue a
            sequence: an int, or with ``cu_seqlens`` an (N,) tensor, one per sequence.
        attention_mask: (B, T), 0 marks padding; padded tokens leave the state untouched.
        cu_seqlens: (N+1,) int, fla's convention: N sequences packed into one row (B = 1),
            sequence n at positions cu_seqlens[n] .. cu_seqlens[n+1]-1, each with its own state
            and chunk grid. No attention_mask with it.
        output_final_state: also return the final state.
        memory_depth: 1, or 2 for a two-layer MLP main memory (``hope_hf.ops.deep_memory``; its
            state has 4d+2 columns; the chunked torch path on every device).

    Returns:
        o (B, T, H, d) in the dtype of ``u``, and the final state (N, H, 2, d, 3d+2) = (running
        state, chunk-start state for the next token) in fp32 (fp64 for fp64 inputs), or None.

    The path follows the tensors' device. On CUDA: the fused Triton kernels of ``fused_chunk.py``
    when the shapes fit them (self-referential, head_dim and chunk_size in 16/32/64, neither v nor
    normalize_values=False, and not cu_seqlens with output_final_state), otherwise fla's Triton
    kernels (one call per chunk, or one call for the whole sequence with
    ``self_referential=False``). Elsewhere, and for memory_depth=2: chunked torch.
    """
    if memory_depth not in (1, 2):
        raise ValueError(f"memory_depth must be 1 or 2, got {memory_depth!r}")
    if initial_state is None:
        if memory_depth == 2:
            raise ValueError("memory_depth=2 needs an initial_state: with W1 = W2 = 0 the MLP memory never learns")
        N = u.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
        initial_state = u.new_zeros(N, u.shape[2], u.shape[3], state_width(u.shape[3]),
                                    dtype=torch.promote_types(u.dtype, torch.float32))
    state, chunk_state = _split_state(initial_state)
    options = {"self_referential": self_referential, "detach_values": detach_values}
    value_options = v is not None or not normalize_values
    if value_options:
        options.update(v=v, normalize_values=normalize_values)
    kernel = _pick_kernel(u.is_cuda, u.shape[-1], chunk_size, self_referential, value_options, cu_seqlens is not None,
                          output_final_state, memory_depth)
    with torch.autocast(u.device.type, enabled=False):  # the recurrence runs in its compute dtype, autocast or not
        if cu_seqlens is not None:
            if attention_mask is not None:
                raise ValueError("cu_seqlens takes no attention_mask: every packed token is real")
            o, state, chunk_state = _varlen(kernel, u, q, b_eta, b_alpha, state, chunk_state, chunk_size, eta_max,
                                            chunk_offset, cu_seqlens, **options)
        elif isinstance(chunk_offset, torch.Tensor):
            raise ValueError("a chunk_offset per sequence (a tensor) needs cu_seqlens; without it pass an int")
        else:
            o, state, chunk_state = kernel(u, q, b_eta, b_alpha, state, chunk_size, eta_max, chunk_state, chunk_offset,
                                           attention_mask, **options)
    return o, torch.stack([state, chunk_state], dim=2) if output_final_state else None
