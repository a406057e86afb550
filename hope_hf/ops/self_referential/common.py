"""Shared math of the self-referential gated delta rule (Eq 83-93; docs/design.md,
"Self-referential Titans memory").

Every path (token-by-token reference, chunked torch, fla bridge) builds the per-token
quantities with these two functions, so they differ only in how the recurrence is evaluated.

State layout, per head (fla's key x value orientation): ``S`` has shape ``(d, 3d + 2)``, the
stacked memories ``[W_k, W_v, W_mem, w_eta, w_alpha]`` as column blocks (the paper's
column-vector maps are their transposes). A memory reads ``z -> z + z @ S[:, block]`` (square maps, deviation from identity) or ``z @ S[:, col]``
(the scalar maps for eta and alpha).
"""

import torch
import torch.nn.functional as F


def state_width(head_dim: int) -> int:
    """Value width of the stacked state: three square memories and two scalar ones."""
    return 3 * head_dim + 2


def memory_slices(head_dim: int) -> dict[str, slice]:
    d = head_dim
    return {
        "key": slice(0, d),
        "value": slice(d, 2 * d),
        "memory": slice(2 * d, 3 * d),
        "eta": slice(3 * d, 3 * d + 1),
        "alpha": slice(3 * d + 1, 3 * d + 2),
    }


def project(
    u: torch.Tensor,
    chunk_state: torch.Tensor,
    b_eta: torch.Tensor,
    b_alpha: torch.Tensor,
    eta_max: float,
    attention_mask: torch.Tensor | None = None,
    value_input: torch.Tensor | None = None,
    normalize_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys, values, learning rates and decays produced by the memories themselves (Eq 90).

    u: (B, H, L, d) memory input; chunk_state: (B, H, d, 3d+2) state at the start of the chunk;
    b_eta, b_alpha: (H,) biases; attention_mask: (B, L), 0 marks padding; value_input: (B, H, L, d)
    the value memory's own input, or None for u (Eq 90: one input for every memory);
    normalize_values: l2-normalise v (keeps the self-feedback bounded).
    Returns k (B,H,L,d), v (B,H,L,d), eta (B,H,L), alpha (B,H,L).
    Padded positions get eta = 0 and alpha = 1, so they leave the state untouched.
    """
    d = u.shape[-1]
    mem = memory_slices(d)
    read = u @ chunk_state  # (B, H, L, 3d+2): every memory applied to u at once
    k = F.normalize(u + read[..., mem["key"]], dim=-1)
    if value_input is None:
        v = u + read[..., mem["value"]]
    else:
        v = value_input + value_input @ chunk_state[..., mem["value"]]
    if normalize_values:
        v = F.normalize(v, dim=-1)
    eta = eta_max * torch.sigmoid(read[..., mem["eta"]].squeeze(-1) + b_eta[:, None])
    alpha = torch.sigmoid(read[..., mem["alpha"]].squeeze(-1) + b_alpha[:, None])
    if attention_mask is not None:
        keep = attention_mask[:, None, :].to(torch.bool)
        eta = torch.where(keep, eta, torch.zeros_like(eta))
        alpha = torch.where(keep, alpha, torch.ones_like(alpha))
    return k, v, eta, alpha


def memory_targets(
    k: torch.Tensor, v: torch.Tensor, chunk_state: torch.Tensor, detach_values: bool = False
) -> torch.Tensor:
    """Regression targets of the stacked memories, vhat_box - [square ? k : 0] (Eq 93).

    vhat_box = M_box(v) is each memory's self-generated value, read from the chunk-start state.
    Subtracting k for the square memories turns "M(k) = k + W k should match vhat" into a
    delta rule on the deviation W. Returns (B, H, L, 3d+2).
    """
    zeros = torch.zeros_like(v[..., :2])
    vhat = v @ chunk_state + torch.cat([v, v, v, zeros], dim=-1)
    if detach_values:
        vhat = vhat.detach()
    return vhat - torch.cat([k, k, k, zeros], dim=-1)


def check_inputs(
    u: torch.Tensor,
    q: torch.Tensor,
    b_eta: torch.Tensor,
    b_alpha: torch.Tensor,
    initial_state: torch.Tensor,
    initial_chunk_state: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    chunk_size: int,
    chunk_offset: int,
    v: torch.Tensor | None = None,
) -> None:
    """Shape and dtype checks at op entry; errors name the argument and what is allowed."""
    if u.dim() != 4:
        raise ValueError(f"u must have shape (batch, seq_len, heads, head_dim), got {tuple(u.shape)}")
    if u.shape[1] < 1:
        raise ValueError("u must hold at least one token (seq_len >= 1)")
    for name, t in (("q", q), ("v", v)):
        if t is not None and t.shape != u.shape:
            raise ValueError(f"{name} must have the shape of u {tuple(u.shape)}, got {tuple(t.shape)}")
    for name, t in (("u", u), ("q", q), ("v", v), ("initial_state", initial_state)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    B, _, H, d = u.shape
    expected = (B, H, d, state_width(d))
    for name, s in (("initial_state", initial_state), ("initial_chunk_state", initial_chunk_state)):
        if s is not None and tuple(s.shape) != expected:
            raise ValueError(f"{name} must have shape {expected} (batch, heads, d, 3d+2), got {tuple(s.shape)}")
    for name, b in (("b_eta", b_eta), ("b_alpha", b_alpha)):
        if tuple(b.shape) != (H,):
            raise ValueError(f"{name} must have shape ({H},) (one bias per head), got {tuple(b.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(u.shape[:2]):
        raise ValueError(f"attention_mask must have shape {tuple(u.shape[:2])}, got {tuple(attention_mask.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if not 0 <= chunk_offset < chunk_size:
        raise ValueError(f"chunk_offset must be in [0, chunk_size={chunk_size}), got {chunk_offset}")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Recurrences run in at least fp32 (fp64 stays fp64 for tests)."""
    return torch.promote_types(x.dtype, torch.float32)


def head_first(u, q, v, b_eta, b_alpha, initial_state, initial_chunk_state):
    """The inputs in the compute dtype, u, q, v head-first (B, H, T, d); the chunk-start state
    defaulting to the initial state."""
    dtype = compute_dtype(u)
    u, q, v = (None if x is None else x.transpose(1, 2).to(dtype) for x in (u, q, v))
    state = initial_state.to(dtype)
    chunk_state = state if initial_chunk_state is None else initial_chunk_state.to(dtype)
    return u, q, v, b_eta.to(dtype), b_alpha.to(dtype), state, chunk_state


def follow_boundary(row_ends, position, state, chunk_state):
    """A chunk boundary at ``position``: the chunk-start state becomes the running state, except in
    rows whose ``row_ends`` (B,) lies before it (their trailing padding, see the op's docstring)."""
    if row_ends is None:
        return state
    return torch.where((position <= row_ends).view(-1, 1, 1, 1).to(state.device), state, chunk_state)


def scan_chunks(
    u: torch.Tensor,
    q: torch.Tensor,
    b_eta: torch.Tensor,
    b_alpha: torch.Tensor,
    initial_state: torch.Tensor,
    chunk_size: int,
    eta_max: float,
    initial_chunk_state: torch.Tensor | None,
    chunk_offset: int,
    attention_mask: torch.Tensor | None,
    self_referential: bool,
    detach_values: bool,
    segment_fn,
    whole_sequence_if_static: bool = False,
    row_ends: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    normalize_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run chunks in sequence; within a chunk, ``segment_fn`` evaluates the gated delta rule.

    ``segment_fn(q, k, w, eta, alpha, state) -> (q^T S_t[:, mem] for every t, final state)``
    works on head-first tensors (B, H, L, .). Projections of a chunk come from the state at its
    start (Eq 90); the first chunk is ``chunk_size - chunk_offset`` tokens long and projects
    from ``initial_chunk_state``. With ``self_referential=False`` the projections always come
    from ``initial_chunk_state``, and ``whole_sequence_if_static`` lets a kernel take the
    whole sequence in one call.
    """
    check_inputs(u, q, b_eta, b_alpha, initial_state, initial_chunk_state, attention_mask, chunk_size, chunk_offset, v)
    in_dtype = u.dtype
    u, q, v, b_eta, b_alpha, state, chunk_state = head_first(u, q, v, b_eta, b_alpha, initial_state, initial_chunk_state)
    T = u.shape[2]
    if not self_referential and whole_sequence_if_static:
        starts = [0]
    else:
        starts = [0, *range(chunk_size - chunk_offset, T, chunk_size)]
    ends = [*starts[1:], T]
    outputs = []
    for start, end in zip(starts, ends):
        if self_referential and start > 0:
            chunk_state = follow_boundary(row_ends, start, state, chunk_state)
        mask = None if attention_mask is None else attention_mask[:, start:end]
        value_input = None if v is None else v[:, :, start:end]
        k, values, eta, alpha = project(u[:, :, start:end], chunk_state, b_eta, b_alpha, eta_max, mask, value_input,
                                        normalize_values)
        w = memory_targets(k, values, chunk_state, detach_values)
        q_chunk = q[:, :, start:end]
        read, state = segment_fn(q_chunk, k, w, eta, alpha, state)
        outputs.append(q_chunk + read)
    o = torch.cat(outputs, dim=2).transpose(1, 2)

    if self_referential and (chunk_offset + T) % chunk_size == 0:
        chunk_state = follow_boundary(row_ends, T, state, chunk_state)
    return o.to(in_dtype), state, chunk_state
