"""Chunked PyTorch path of the self-referential gated delta rule (the CPU path).

Chunks run in sequence (each projects from its start state, Eq 90); inside a chunk of L tokens
the recurrence S_t = alpha_t S_{t-1} + k_t delta_t^T, delta_t = eta_t (w_t - S_{t-1}^T k_t),
is solved in parallel with the UT transform of DeltaNet / Gated DeltaNet:
    (I + A) Delta = diag(eta) (W - diag(gamma_{t-1}) K S_0),
    A_ts = eta_t (gamma_{t-1} / gamma_s) k_t.k_s   for s < t,
with gamma_t the running product of alpha inside the chunk.

``ChunkScan`` is one ``torch.autograd.Function`` for the whole sequence: the forward runs every
chunk with all heads and rows in one call per product (no autograd graph) and keeps what it
computed; the hand-written backward walks the chunks in reverse and reuses it
(docs/kernels.md).
``delta_rule_chunk`` is the same chunk math written for autograd: the path under torch.func
transforms (vmap, grad), which cannot trace a Function without ``setup_context``.
``use_compiled_chunks()`` runs the per-chunk forward and backward through ``torch.compile``.
"""

import functools
import warnings

import torch

from .common import check_inputs, compute_dtype, memory_slices, scan_chunks

_NORM_EPS = 1e-12  # F.normalize's default


def delta_rule_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    state: torch.Tensor,
    read_columns: slice | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk in parallel form, for autograd. q, k: (B,H,L,d); w: (B,H,L,V); eta, alpha: (B,H,L);
    state: (B,H,d,V). Returns (q_t^T S_t[:, read_columns] for each t, final state); the columns
    read default to the main memory's (d of them)."""
    L, d = q.shape[-2], q.shape[-1]
    mem = memory_slices(d)["memory"] if read_columns is None else read_columns
    log_alpha = torch.log(alpha)
    log_gamma = log_alpha.cumsum(-1)  # log of prod_{s<=t} alpha_s
    log_gamma_prev = log_gamma - log_alpha  # log of prod_{s<t} alpha_s
    inclusive = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    strict = inclusive.tril(-1)

    def decay(log_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """exp(log_t[t] - log_gamma[s]) where mask[t, s], else 0: (B, H, L, L)."""
        return torch.exp((log_t[..., :, None] - log_gamma[..., None, :]).masked_fill(~mask, float("-inf")))

    A = eta[..., None] * decay(log_gamma_prev, strict) * (k @ k.transpose(-1, -2))
    rhs = eta[..., None] * (w - log_gamma_prev.exp()[..., None] * (k @ state))
    delta = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)  # (B,H,L,V)

    read = log_gamma.exp()[..., None] * (q @ state[..., mem])
    read = read + (decay(log_gamma, inclusive) * (q @ k.transpose(-1, -2))) @ delta[..., mem]
    to_end = (log_gamma[..., -1:] - log_gamma).exp()[..., None]  # gamma_L / gamma_s: (B,H,L,1)
    final = log_gamma[..., -1].exp()[..., None, None] * state + (k * to_end).transpose(-1, -2) @ delta
    return read, final


@functools.lru_cache(maxsize=16)
def _masks(L: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, L) bool: s <= t and s < t."""
    inclusive = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    return inclusive, inclusive.tril(-1)


def _normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """F.normalize(x, dim=-1) and the clamped norm it divided by (B,H,L,1)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    return x / norm, norm


def _normalize_backward(grad: torch.Tensor, y: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Gradient through y = x / max(|x|, eps): (grad - y (y.grad)) / |x| where |x| > eps."""
    radial = (y * grad).sum(-1, keepdim=True) * (norm > _NORM_EPS)
    return (grad - y * radial) / norm


def _chunk_forward(u, q, p, s0, keep, b_eta, b_alpha, eta_max, value_input=None, normalize_values=True):
    """One chunk, all heads and rows at once (Eq 90 projections + the UT-transform solve).

    u, q: (B,H,L,d); p: (B,H,d,V) state the chunk projects from; s0: (B,H,d,V) running state at
    the chunk start; keep: (B,1,L) bool (False = padding) or None; b_eta, b_alpha: (H,);
    value_input: (B,H,L,d) the value memory's input, or None for u.
    Returns (o (B,H,L,d), final state (B,H,d,V), what the backward reuses).
    """
    d, L = u.shape[-1], u.shape[-2]
    sl = memory_slices(d)
    inclusive, strict = _masks(L, u.device)

    R = u @ p  # every memory applied to u at once (B,H,L,V)
    k, k_norm = _normalize(u + R[..., sl["key"]])
    v = u + R[..., sl["value"]] if value_input is None else value_input + value_input @ p[..., sl["value"]]
    v, v_norm = _normalize(v) if normalize_values else (v, None)
    sig_eta = torch.sigmoid(R[..., sl["eta"]].squeeze(-1) + b_eta[:, None])
    eta = eta_max * sig_eta
    alpha = torch.sigmoid(R[..., sl["alpha"]].squeeze(-1) + b_alpha[:, None])
    if keep is not None:
        eta = eta * keep
        alpha = torch.where(keep, alpha, torch.ones_like(alpha))
    W = v @ p  # self-generated values M(v), then the targets of Eq 93
    W[..., : 3 * d] += (v - k).repeat(1, 1, 1, 3)

    log_alpha = torch.log(alpha)
    g = log_alpha.cumsum(-1)  # log gamma_t
    g_prev = g - log_alpha  # log gamma_{t-1}
    diff = g[..., :, None] - g[..., None, :]
    D_incl = diff.masked_fill(~inclusive, float("-inf")).exp()  # gamma_t / gamma_s, s <= t
    D_strict = (diff - log_alpha[..., :, None]).masked_fill(~strict, float("-inf")).exp()  # gamma_{t-1}/gamma_s, s < t
    KK = k @ k.transpose(-1, -2)
    KS = k @ s0
    e_prev = g_prev.exp()
    X = W - e_prev[..., None] * KS
    A = eta[..., None] * D_strict * KK
    eye = torch.eye(L, dtype=u.dtype, device=u.device).expand_as(A)
    T_inv = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True)  # (I + A)^-1
    delta = T_inv @ (eta[..., None] * X)

    QK = q @ k.transpose(-1, -2)
    M = D_incl * QK
    e_g = g.exp()
    QS = q @ s0[..., sl["memory"]]
    o = q + e_g[..., None] * QS + M @ delta[..., sl["memory"]]
    to_end = (g[..., -1:] - g).exp()  # gamma_L / gamma_s (B,H,L)
    K_end = k * to_end[..., None]
    final = g[..., -1].exp()[..., None, None] * s0 + K_end.transpose(-1, -2) @ delta
    saved = (u, q, p, s0, keep, k, k_norm, v, v_norm, sig_eta, eta, alpha, g, D_incl, D_strict,
             KK, KS, e_prev, X, T_inv, delta, QK, M, e_g, QS, to_end, K_end, value_input)
    return o, final, saved


def _chunk_backward(d_o, d_final, saved, eta_max, detach_values):
    """Gradients of one chunk: from dL/do (B,H,L,d) and dL/dfinal (B,H,d,V) to
    (du, dq, dp, ds0, db_eta, db_alpha, d value_input or None); the reverse of ``_chunk_forward``
    line by line."""
    (u, q, p, s0, keep, k, k_norm, v, v_norm, sig_eta, eta, alpha, g, D_incl, D_strict,
     KK, KS, e_prev, X, T_inv, delta, QK, M, e_g, QS, to_end, K_end, value_input) = saved
    d = u.shape[-1]
    sl = memory_slices(d)
    mem = sl["memory"]
    _, strict = _masks(u.shape[-2], u.device)
    tr = lambda x: x.transpose(-1, -2)  # noqa: E731

    # final = gamma_L s0 + K_end^T delta
    gamma_L = g[..., -1].exp()
    ds0 = gamma_L[..., None, None] * d_final
    dg = torch.zeros_like(g)
    dg[..., -1] = gamma_L * (d_final * s0).sum((-2, -1))
    d_delta = K_end @ d_final
    dK_end = delta @ tr(d_final)
    dk = dK_end * to_end[..., None]
    d_to_end = (dK_end * k).sum(-1) * to_end  # d/d(g_L - g_s)
    dg[..., -1] += d_to_end.sum(-1)
    dg = dg - d_to_end

    # o = q + gamma * (q s0[mem]) + (D_incl * QK) delta[mem]
    dq = d_o + e_g[..., None] * (d_o @ tr(s0[..., mem]))
    dg = dg + e_g * (d_o * QS).sum(-1)
    ds0[..., mem] += tr(q * e_g[..., None]) @ d_o
    dM = d_o @ tr(delta[..., mem])
    d_delta[..., mem] += tr(M) @ d_o
    dQK = dM * D_incl
    dq = dq + dQK @ k
    dk = dk + tr(dQK) @ q
    d_log_incl = dM * QK * D_incl  # d/d(g_t - g_s)
    dg = dg + d_log_incl.sum(-1) - d_log_incl.sum(-2)

    # delta = (I + A)^-1 (eta * X)
    d_rhs = tr(T_inv) @ d_delta
    dA = -(d_rhs @ tr(delta)) * strict
    d_eta = (d_rhs * X).sum(-1)
    dX = eta[..., None] * d_rhs
    # X = W - gamma_prev * KS
    dKS = -e_prev[..., None] * dX
    dg_prev = -e_prev * (dX * KS).sum(-1)
    dk = dk + dKS @ tr(s0)
    ds0 = ds0 + tr(k) @ dKS
    # A = eta * D_strict * KK
    dA_D = dA * D_strict
    d_eta = d_eta + (dA_D * KK).sum(-1)
    dKK = eta[..., None] * dA_D
    dk = dk + (dKK + tr(dKK)) @ k
    d_log_strict = dKK * KK  # d/d(g_prev_t - g_s)
    dg_prev = dg_prev + d_log_strict.sum(-1)
    dg = dg - d_log_strict.sum(-2)
    # g = cumsum(log alpha), g_prev = g - log alpha
    dg = dg + dg_prev
    d_log_alpha = dg.flip(-1).cumsum(-1).flip(-1) - dg_prev

    # W = v p + [v, v, v, 0] - [k, k, k, 0]
    dW = dX
    dW_sq = dW[..., : 3 * d].unflatten(-1, (3, d)).sum(-2)
    dk = dk - dW_sq
    if detach_values:
        dv, dp = torch.zeros_like(v), torch.zeros_like(p)
    else:
        dv = dW @ tr(p) + dW_sq
        dp = tr(v) @ dW

    # projections: R = u p; k = normalize(u + R[key]); v = normalize(x + x p[value]), x = u or
    # the value input (normalize optional); eta, alpha = sigmoids
    d_alpha_logit = d_log_alpha * (1 - alpha)
    d_eta_logit = d_eta * eta_max * sig_eta * (1 - sig_eta)
    if keep is not None:
        d_alpha_logit = d_alpha_logit * keep
        d_eta_logit = d_eta_logit * keep
    dk_in = _normalize_backward(dk, k, k_norm)
    dv_in = dv if v_norm is None else _normalize_backward(dv, v, v_norm)
    dv_from_u = dv_in if value_input is None else torch.zeros_like(dv_in)
    dR = torch.cat([dk_in, dv_from_u, torch.zeros_like(dk_in), d_eta_logit[..., None], d_alpha_logit[..., None]], -1)
    du = dk_in + dv_from_u + dR @ tr(p)
    dp = dp + tr(u) @ dR
    d_value_input = None
    if value_input is not None:
        d_value_input = dv_in + dv_in @ tr(p[..., sl["value"]])
        dp[..., sl["value"]] += tr(value_input) @ dv_in
    return du, dq, dp, ds0, d_eta_logit.sum((0, 2)), d_alpha_logit.sum((0, 2)), d_value_input


def _chunk_bounds(T: int, chunk_size: int, chunk_offset: int) -> list[tuple[int, int]]:
    starts = [0, *range(chunk_size - chunk_offset, T, chunk_size)]
    return list(zip(starts, [*starts[1:], T]))


_compiled_chunk_fns: dict = {}  # backend -> (forward, backward) wrapped by torch.compile, built once
_active_compiled: tuple | None = None  # what ChunkScan calls now; None: eager


def use_compiled_chunks(enabled: bool = True, backend="inductor") -> None:
    """Run ``ChunkScan``'s per-chunk forward and backward through ``torch.compile`` (off by default).

    It pays off in long runs only: the gain per step is modest and the one-off compile is long
    (docs/kernels.md has the measurements). Where compiling fails (e.g. no C++ compiler for
    inductor) the chunks run eagerly from then on, after one warning.
    """
    global _active_compiled
    if not enabled:
        _active_compiled = None
        return
    if backend not in _compiled_chunk_fns:
        _compiled_chunk_fns[backend] = tuple(torch.compile(fn, backend=backend, dynamic=False)
                                             for fn in (_chunk_forward, _chunk_backward))
    _active_compiled = _compiled_chunk_fns[backend]


def _run_chunk(which: int, *args):
    """_chunk_forward (which=0) or _chunk_backward (1), compiled when ``use_compiled_chunks`` is on."""
    global _active_compiled
    eager = (_chunk_forward, _chunk_backward)[which]
    if _active_compiled is None:
        return eager(*args)
    try:
        return _active_compiled[which](*args)
    except Exception as error:  # a bug in the math fails again below, eagerly, with its own error
        warnings.warn(f"use_compiled_chunks: torch.compile failed ({type(error).__name__}: {error}); "
                      "the chunks run eagerly from now on", RuntimeWarning, stacklevel=2)
        _active_compiled = None
        return eager(*args)


def _active_chunk_forward(u, q, p, s0, keep, rows, b_eta, b_alpha, eta_max, value_input, normalize_values):
    """``_chunk_forward`` on the rows that have real tokens in the chunk (``rows``, or None = all);
    the others hold padding only, so their state stays and their output is q + q^T S[:, mem]."""
    if rows is None:
        return _run_chunk(0, u, q, p, s0, keep, b_eta, b_alpha, eta_max, value_input, normalize_values)
    mem = memory_slices(u.shape[-1])["memory"]
    o = q + q @ s0[..., mem]
    if rows.numel() == 0:
        return o, s0, None
    pick = lambda x: None if x is None else x.index_select(0, rows)  # noqa: E731
    o_rows, final_rows, saved = _run_chunk(0, pick(u), pick(q), pick(p), pick(s0), pick(keep), b_eta, b_alpha, eta_max,
                                           pick(value_input), normalize_values)
    return o.index_copy(0, rows, o_rows), s0.index_copy(0, rows, final_rows), saved


def _active_chunk_backward(d_o, d_final, record, eta_max, detach_values):
    """Backward of ``_active_chunk_forward``: (du, dq, dp, ds0, db_eta, db_alpha, d value_input or
    None where the chunk had none or only padding)."""
    rows, saved, q, s0 = record
    if rows is None:
        return _run_chunk(1, d_o, d_final, saved, eta_max, detach_values)
    mem = memory_slices(q.shape[-1])["memory"]
    du, dp = torch.zeros_like(q), torch.zeros_like(s0)
    dq = d_o + d_o @ s0[..., mem].transpose(-1, -2)
    ds0 = d_final.clone()
    ds0[..., mem] += q.transpose(-1, -2) @ d_o
    db = torch.zeros(q.shape[1], dtype=q.dtype, device=q.device)
    if saved is None:
        return du, dq, dp, ds0, db, db, None
    pick = lambda x: x.index_select(0, rows)  # noqa: E731
    du_r, dq_r, dp_r, ds0_r, db_eta, db_alpha, dvi_r = _run_chunk(1, pick(d_o), pick(d_final), saved, eta_max,
                                                                   detach_values)
    dvi = None if dvi_r is None else torch.zeros_like(q).index_copy(0, rows, dvi_r)
    return (du.index_copy(0, rows, du_r), dq.index_copy(0, rows, dq_r), dp.index_copy(0, rows, dp_r),
            ds0.index_copy(0, rows, ds0_r), db_eta, db_alpha, dvi)


class ChunkScan(torch.autograd.Function):
    """The whole chunk loop as one autograd node. Tensors head-first, in the compute dtype:
    u, q, value_input (B,H,T,d), value_input may be None; states (B,H,d,V); mask (B,T) bool or
    None; row_ends (B,) or None. With ``row_ends``, a chunk runs only the rows that have real
    tokens in it."""

    @staticmethod
    def forward(ctx, u, q, b_eta, b_alpha, state, chunk_state, mask, row_ends, chunk_size, eta_max,
                chunk_offset, self_referential, detach_values, value_input, normalize_values):
        T = u.shape[2]
        outputs, records, follows = [], [], []
        backward_needed = any(ctx.needs_input_grad)  # otherwise nothing is kept: inference memory stays O(T d)
        for start, end in _chunk_bounds(T, chunk_size, chunk_offset):
            follow = None  # rows whose chunk-start state moves to the running state here
            if self_referential and start > 0:
                follow = _follows(row_ends, start, state)
                chunk_state = state if follow is None else torch.where(follow, state, chunk_state)
            keep = None if mask is None else mask[:, None, start:end]
            rows = None
            if row_ends is not None and bool((row_ends <= start).any()):
                rows = (row_ends > start).nonzero().squeeze(-1).to(u.device)
            u_c, q_c = u[:, :, start:end], q[:, :, start:end]
            v_c = None if value_input is None else value_input[:, :, start:end]
            s0 = state
            o, state, saved = _active_chunk_forward(u_c, q_c, chunk_state, s0, keep, rows, b_eta, b_alpha, eta_max, v_c,
                                                    normalize_values)
            outputs.append(o)
            if backward_needed:
                records.append((rows, saved, q_c, s0))
                follows.append(follow)
        final_follow = None
        if self_referential and (chunk_offset + T) % chunk_size == 0:
            final_follow = _follows(row_ends, T, state)
            chunk_state = state if final_follow is None else torch.where(final_follow, state, chunk_state)
        ctx.records, ctx.follows, ctx.final_follow = records, follows, final_follow
        ctx.args = (eta_max, self_referential, detach_values, (chunk_offset + T) % chunk_size == 0, value_input is not None)
        return torch.cat(outputs, dim=2), state, chunk_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_o, d_state, d_chunk_state):
        eta_max, self_referential, detach_values, ends_on_boundary, has_value_input = ctx.args
        records = ctx.records
        q0, s_last = records[0][2], records[-1][3]
        B, H, _, d = q0.shape
        d_state = torch.zeros_like(s_last) if d_state is None else d_state.clone()
        # gradient reaching the current chunk-start state from later chunks that kept it
        d_carry = torch.zeros_like(d_state) if d_chunk_state is None else d_chunk_state.clone()
        if self_referential and ends_on_boundary:
            d_state, d_carry = _route(ctx.final_follow, d_carry, d_state)
        if d_o is None:
            d_o = torch.zeros(B, H, sum(r[2].shape[2] for r in records), d, dtype=q0.dtype, device=q0.device)
        du, dq, dvi = [], [], []
        db_eta = torch.zeros(H, dtype=q0.dtype, device=q0.device)
        db_alpha = torch.zeros_like(db_eta)
        end = d_o.shape[2]
        for index in reversed(range(len(records))):
            L = records[index][2].shape[2]
            du_c, dq_c, dp, ds0, dbe, dba, dvi_c = _active_chunk_backward(
                d_o[:, :, end - L : end], d_state, records[index], eta_max, detach_values
            )
            end -= L
            du.append(du_c)
            dq.append(dq_c)
            dvi.append(torch.zeros_like(du_c) if dvi_c is None else dvi_c)
            db_eta, db_alpha = db_eta + dbe, db_alpha + dba
            d_carry = d_carry + dp
            d_state = ds0
            if self_referential and index > 0:
                d_state, d_carry = _route(ctx.follows[index], d_carry, d_state)
        du, dq = torch.cat(du[::-1], dim=2), torch.cat(dq[::-1], dim=2)
        dvi = torch.cat(dvi[::-1], dim=2) if has_value_input else None
        return du, dq, db_eta, db_alpha, d_state, d_carry, None, None, None, None, None, None, None, dvi, None


def _follows(row_ends, position, state):
    """(B,1,1,1) bool: rows whose chunk-start state follows a boundary at ``position``, or None (all)."""
    if row_ends is None:
        return None
    return (position <= row_ends).view(-1, 1, 1, 1).to(state.device)


def _route(follow, d_carry, d_state):
    """Backward of ``chunk_state = where(follow, state, chunk_state)``."""
    if follow is None:
        return d_state + d_carry, torch.zeros_like(d_carry)
    return d_state + torch.where(follow, d_carry, 0), torch.where(follow, 0, d_carry)


def chunk_self_referential_gated_delta_rule(
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
    """See ``hope_hf.ops.self_referential_gated_delta_rule`` for the arguments.

    Under torch.func transforms (vmap, grad, ...) the chunk loop runs as plain torch ops with
    autograd's backward (``delta_rule_chunk``), which those transforms can trace."""
    if torch._C._are_functorch_transforms_active():
        return scan_chunks(
            u, q, b_eta, b_alpha, initial_state, chunk_size, eta_max, initial_chunk_state, chunk_offset,
            attention_mask, self_referential, detach_values, segment_fn=delta_rule_chunk, row_ends=row_ends, v=v,
            normalize_values=normalize_values,
        )
    check_inputs(u, q, b_eta, b_alpha, initial_state, initial_chunk_state, attention_mask, chunk_size, chunk_offset, v)
    in_dtype, dtype = u.dtype, compute_dtype(u)
    u_h, q_h = (x.transpose(1, 2).to(dtype) for x in (u, q))  # (B, H, T, d)
    v_h = None if v is None else v.transpose(1, 2).to(dtype)
    state = initial_state.to(dtype)
    chunk_state = state if initial_chunk_state is None else initial_chunk_state.to(dtype)
    mask = None if attention_mask is None else attention_mask.to(torch.bool)
    o, state, chunk_state = ChunkScan.apply(
        u_h, q_h, b_eta.to(dtype), b_alpha.to(dtype), state, chunk_state, mask, row_ends, chunk_size, eta_max,
        chunk_offset, self_referential, detach_values, v_h, normalize_values,
    )
    return o.transpose(1, 2).to(in_dtype), state, chunk_state


__all__ = ["ChunkScan", "chunk_self_referential_gated_delta_rule", "delta_rule_chunk"]
