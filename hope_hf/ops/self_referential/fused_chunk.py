"""Fused Triton kernels of the self-referential gated delta rule: one launch per layer.

One program per (batch, head) walks the chunks of the sequence in order. For chunk n it
    1. projects k, v, eta, alpha from the chunk's projection state P (Eq 90),
    2. forms the self-generated targets W = v P + [v - k, v - k, v - k, 0] (Eq 93),
    3. solves the intra-chunk delta rule with the UT transform (see chunk.py):
           T = (I + A)^-1,  A_ts = eta_t (gamma_{t-1} / gamma_s) k_t.k_s  (s < t),
           Delta = T diag(eta) (W - diag(gamma_{t-1}) K S_n),
    4. writes o = q + read-out and the next chunk-boundary state
           S_{n+1} = gamma_L S_n + (K * gamma_L / gamma)^T Delta.
The state (d, 3d+2) is handled in column tiles of width BV <= d: tiles of the key, value and
memory maps, then one tile whose first two columns are the eta and alpha maps (the rest masked
off). Inside a square map, the identity part of Eq 93's targets, (v - k) restricted to a tile's
columns, is (v - k) E with E a 0/1 selection matrix. Chunk-boundary states live in global
memory (they are the output ``h``), so a program holds one (d, BV) tile of them at a time.

The backward kernel walks the chunks in reverse, recomputes a chunk from its stored boundary
state and carries dL/dS in global memory. Projections read P = S_n (self-referential, n > 0)
or the initial chunk state (first chunk, or ``self_referential=False``), so dL/dP goes to dS_n
or to the initial chunk state's gradient.

Sequences are laid out so every chunk is full: the wrapper pads ``chunk_offset`` masked tokens
in front and masked tokens at the end; masked tokens have eta = 0 and alpha = 1, so they leave
the state untouched. The kernels need a CUDA device, or ``TRITON_INTERPRET=1`` (CPU tensors);
they use no autotuning and nothing the interpreter lacks.
"""

import os

import torch
import torch.nn.functional as F

try:  # in a try block, transformers' remote-code loader does not demand triton of CPU-only installs
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("the fused self-referential kernels need triton (installed with CUDA builds of torch)") from error

from .common import check_inputs, compute_dtype, state_width

# F.normalize's eps: the kernels reproduce x / max(|x|, eps) exactly.
NORM_EPS = tl.constexpr(1e-12)
# Columns of the state a program holds at once, as (d, width) tiles: narrow tiles keep d = 128
# within a GPU's shared memory. Tests narrow it to exercise the tiling at small d.
MAX_TILE_WIDTH = 32
# Tests set this to fill every buffer the kernels write with NaN first: a read of memory the
# kernels did not write then shows up in the results.
POISON_OUTPUTS = False


def _output_like(x: torch.Tensor, *shape: int) -> torch.Tensor:
    out = x.new_empty(shape or x.shape)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


@triton.jit
def _tile_ptrs(base, row0, col0, R: tl.constexpr, C: tl.constexpr, width: tl.constexpr):
    """Pointers and column mask of the (R, C) tile at (row0, col0) of a row-major matrix with
    ``width`` columns."""
    rows = row0 + tl.arange(0, R)
    cols = col0 + tl.arange(0, C)
    return base + rows[:, None] * width + cols[None, :], (cols < width)[None, :]


@triton.jit
def _load(base, row0, col0, R: tl.constexpr, C: tl.constexpr, width: tl.constexpr):
    ptrs, mask = _tile_ptrs(base, row0, col0, R, C, width)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _store(base, row0, col0, value, R: tl.constexpr, C: tl.constexpr, width: tl.constexpr):
    ptrs, mask = _tile_ptrs(base, row0, col0, R, C, width)
    tl.store(ptrs, value, mask=mask)


@triton.jit
def _add(base, row0, col0, value, R: tl.constexpr, C: tl.constexpr, width: tl.constexpr):
    ptrs, mask = _tile_ptrs(base, row0, col0, R, C, width)
    tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + value, mask=mask)


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """a @ b on fp32 (fp64) operands: PREC "ieee" exact, "tf32" on tensor cores (bf16 inputs).
    (bf16 operands would halve shared memory, but cost accuracy in the gradients: docs/kernels.md.)"""
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _selection(first, D: tl.constexpr, BV: tl.constexpr, dtype: tl.constexpr):
    """(D, BV) matrix E with E[i, j] = (i == first + j): x @ E is x[:, first:first + BV]."""
    return (tl.arange(0, D)[:, None] == first + tl.arange(0, BV)[None, :]).to(dtype)


@triton.jit
def _column(x, c, W: tl.constexpr):
    """Column c of an (L, W) tile, as an (L,) vector."""
    return tl.sum(tl.where(tl.arange(0, W)[None, :] == c, x, 0.0), 1)


@triton.jit
def _last(x, L: tl.constexpr):
    """x[L - 1] of an (L,) vector, as a scalar."""
    return tl.sum(tl.where(tl.arange(0, L) == L - 1, x, 0.0), 0)


@triton.jit
def _project(u_rows, P_base, keep, b_eta, b_alpha, eta_max,
             L: tl.constexpr, D: tl.constexpr, BV: tl.constexpr, V: tl.constexpr, PREC: tl.constexpr):
    """Eq 90 for a chunk: l2-normalised k, v; eta, alpha (masked tokens: 0 and 1). u P is summed
    over row tiles of P, so P is only ever read (BV, D) at a time. Also returns what the backward
    needs: the norms and sigmoid(eta logits)."""
    k_raw = _load(u_rows, 0, 0, L, D, D)
    v_raw = k_raw
    scalars = tl.zeros([L, BV], dtype=k_raw.dtype)  # columns 0, 1: eta and alpha logits
    for r in tl.static_range(D // BV):
        U_r = _load(u_rows, 0, r * BV, L, BV, D)
        k_raw += _dot(U_r, _load(P_base, r * BV, 0, BV, D, V), PREC)
        v_raw += _dot(U_r, _load(P_base, r * BV, D, BV, D, V), PREC)
        scalars += _dot(U_r, _load(P_base, r * BV, 3 * D, BV, BV, V), PREC)
    k_norm = tl.maximum(tl.sqrt(tl.sum(k_raw * k_raw, 1)), NORM_EPS)
    v_norm = tl.maximum(tl.sqrt(tl.sum(v_raw * v_raw, 1)), NORM_EPS)
    sig_eta = tl.sigmoid(_column(scalars, 0, BV) + b_eta)
    eta = tl.where(keep, eta_max * sig_eta, 0.0)
    alpha = tl.where(keep, tl.sigmoid(_column(scalars, 1, BV) + b_alpha), 1.0)
    return k_raw / k_norm[:, None], v_raw / v_norm[:, None], k_norm, v_norm, sig_eta, eta, alpha


@triton.jit
def _decay(log_to, log_from, mask):
    """exp(log_to[t] - log_from[s]) where mask[t, s], else 0 (never evaluates exp out of mask)."""
    diff = log_to[:, None] - log_from[None, :]
    return tl.where(mask, tl.exp(tl.where(mask, diff, 0.0)), 0.0)


@triton.jit
def _ut_transform(k, eta, log_gamma, log_gamma_prev, L: tl.constexpr, PREC: tl.constexpr):
    """A (strictly lower) and T = (I + A)^-1 by forward substitution, row by row."""
    idx = tl.arange(0, L)
    strict = idx[:, None] > idx[None, :]
    A = eta[:, None] * _decay(log_gamma_prev, log_gamma, strict) * _dot(k, tl.trans(k), PREC)
    N = -A  # rows < i hold T - I, rows >= i still hold -A
    for i in range(1, L):
        row = tl.sum(tl.where(idx[:, None] == i, N, 0.0), 0)
        row = row + tl.sum(row[:, None] * N, 0)
        N = tl.where(idx[:, None] == i, row[None, :], N)
    return A, N + tl.where(idx[:, None] == idx[None, :], 1.0, 0.0)


@triton.jit
def _targets(v, k, P_c, c: tl.constexpr, D: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Column tile c of the targets W = M(v) - [square ? k : 0] (Eq 93): v P_c, plus (v - k)
    restricted to the tile's columns when the tile lies in a square memory."""
    W = _dot(v, P_c, PREC)
    if c * BV < 3 * D:
        W += _dot(v - k, _selection((c * BV) % D, D, BV, v.dtype), PREC)
    return W


@triton.jit
def _fwd_kernel(
    u_ptr, q_ptr, keep_ptr, b_eta_ptr, b_alpha_ptr, p0_ptr, h_ptr, o_ptr,
    eta_max, num_chunks, H,
    L: tl.constexpr, D: tl.constexpr, BV: tl.constexpr, SELF_REF: tl.constexpr, PREC: tl.constexpr,
):
    V: tl.constexpr = 3 * D + 2
    NUM_TILES: tl.constexpr = (V + BV - 1) // BV  # column tiles of the state; the last holds eta, alpha
    bh = tl.program_id(0)
    T = num_chunks * L
    b_eta = tl.load(b_eta_ptr + bh % H)
    b_alpha = tl.load(b_alpha_ptr + bh % H)
    idx = tl.arange(0, L)
    inclusive = idx[:, None] >= idx[None, :]
    p0_base = p0_ptr + bh * D * V
    for n in range(num_chunks):
        u_rows = u_ptr + (bh * T + n * L) * D
        q_rows = q_ptr + (bh * T + n * L) * D
        o_rows = o_ptr + (bh * T + n * L) * D
        h_base = h_ptr + (bh * (num_chunks + 1) + n) * D * V
        P_base = p0_base
        if SELF_REF:
            if n > 0:
                P_base = h_base
        keep = tl.load(keep_ptr + (bh // H) * T + n * L + idx) != 0
        k, v, _, _, _, eta, alpha = _project(u_rows, P_base, keep, b_eta, b_alpha, eta_max, L, D, BV, V, PREC)
        log_alpha = tl.log(alpha)
        log_gamma = tl.cumsum(log_alpha, 0)
        log_gamma_prev = log_gamma - log_alpha
        log_gamma_end = _last(log_gamma, L)
        _, Tm = _ut_transform(k, eta, log_gamma, log_gamma_prev, L, PREC)
        k_to_end = k * tl.exp(log_gamma_end - log_gamma)[:, None]
        Q = _load(q_rows, 0, 0, L, D, D)
        QK = _decay(log_gamma, log_gamma, inclusive) * _dot(Q, tl.trans(k), PREC)
        for c in tl.static_range(NUM_TILES):
            S_c = _load(h_base, 0, c * BV, D, BV, V)
            KS = _dot(k, S_c, PREC)
            W = _targets(v, k, _load(P_base, 0, c * BV, D, BV, V), c, D, BV, PREC)
            R = eta[:, None] * (W - tl.exp(log_gamma_prev)[:, None] * KS)
            Delta = _dot(Tm, R, PREC)
            S_next = tl.exp(log_gamma_end) * S_c + _dot(tl.trans(k_to_end), Delta, PREC)
            _store(h_base + D * V, 0, c * BV, S_next, D, BV, V)
            if (c * BV >= 2 * D) and (c * BV < 3 * D):  # memory columns: o_t = q_t + q_t^T S_t[:, mem]
                read = tl.exp(log_gamma)[:, None] * _dot(Q, S_c, PREC)
                read += _dot(QK, Delta, PREC)
                _store(o_rows, 0, c * BV - 2 * D, _load(q_rows, 0, c * BV - 2 * D, L, BV, D) + read, L, BV, D)
        tl.debug_barrier()  # S_{n+1} written by all threads before the next chunk reads it


@triton.jit
def _bwd_kernel(
    u_ptr, q_ptr, keep_ptr, b_eta_ptr, b_alpha_ptr, p0_ptr, h_ptr, do_ptr, dh_ptr,
    du_ptr, dq_ptr, dstate_ptr, dp0_ptr, db_eta_ptr, db_alpha_ptr,
    eta_max, num_chunks, H,
    L: tl.constexpr, D: tl.constexpr, BV: tl.constexpr, SELF_REF: tl.constexpr, DETACH: tl.constexpr,
    PREC: tl.constexpr,
):
    V: tl.constexpr = 3 * D + 2
    NUM_TILES: tl.constexpr = (V + BV - 1) // BV
    bh = tl.program_id(0)
    T = num_chunks * L
    b_eta = tl.load(b_eta_ptr + bh % H)
    b_alpha = tl.load(b_alpha_ptr + bh % H)
    idx = tl.arange(0, L)
    strict = idx[:, None] > idx[None, :]
    inclusive = idx[:, None] >= idx[None, :]
    p0_base = p0_ptr + bh * D * V
    dp0_base = dp0_ptr + bh * D * V
    dS_base = dstate_ptr + bh * D * V  # dL/dS at the current chunk boundary
    db_eta = tl.zeros([L], dtype=u_ptr.dtype.element_ty)
    db_alpha = tl.zeros([L], dtype=u_ptr.dtype.element_ty)
    for step in range(num_chunks):
        n = num_chunks - 1 - step
        row0 = (bh * T + n * L) * D
        h_base = h_ptr + (bh * (num_chunks + 1) + n) * D * V
        dh_next = dh_ptr + (bh * (num_chunks + 1) + n + 1) * D * V  # gradient of S_{n+1} as an output
        proj_to_state = (n > 0) & SELF_REF
        P_base, dP_base = p0_base, dp0_base
        if proj_to_state:
            P_base, dP_base = h_base, dS_base

        # Recompute the chunk's forward quantities.
        keep = tl.load(keep_ptr + (bh // H) * T + n * L + idx) != 0
        k, v, k_norm, v_norm, sig_eta, eta, alpha = _project(u_ptr + row0, P_base, keep, b_eta, b_alpha, eta_max,
                                                             L, D, BV, V, PREC)
        log_alpha = tl.log(alpha)
        log_gamma = tl.cumsum(log_alpha, 0)
        log_gamma_prev = log_gamma - log_alpha
        log_gamma_end = _last(log_gamma, L)
        gamma, gamma_prev, gamma_end = tl.exp(log_gamma), tl.exp(log_gamma_prev), tl.exp(log_gamma_end)
        A, Tm = _ut_transform(k, eta, log_gamma, log_gamma_prev, L, PREC)
        to_end = tl.exp(log_gamma_end - log_gamma)
        k_to_end = k * to_end[:, None]
        Q = _load(q_ptr + row0, 0, 0, L, D, D)
        decay = _decay(log_gamma, log_gamma, inclusive)
        QK = _dot(Q, tl.trans(k), PREC)

        dk = tl.zeros([L, D], dtype=k.dtype)
        dv = tl.zeros([L, D], dtype=k.dtype)
        dq = _load(do_ptr + row0, 0, 0, L, D, D)  # o = q + read
        dA = tl.zeros([L, L], dtype=k.dtype)
        d_mix = tl.zeros([L, L], dtype=k.dtype)  # dL/d(decay * Q K^T)
        d_eta = tl.zeros([L], dtype=k.dtype)
        d_log_gamma = tl.zeros([L], dtype=k.dtype)
        d_log_gamma_prev = tl.zeros([L], dtype=k.dtype)
        d_log_gamma_end = tl.sum(tl.zeros([L], dtype=k.dtype), 0)

        # Pass 1, tile by tile: S_{n+1}, the read-out, Delta, R and W back to dS_n, dk, dv, dA.
        for c in tl.static_range(NUM_TILES):
            S_c = _load(h_base, 0, c * BV, D, BV, V)
            P_c = _load(P_base, 0, c * BV, D, BV, V)
            dS_next = _load(dS_base, 0, c * BV, D, BV, V) + _load(dh_next, 0, c * BV, D, BV, V)
            KS = _dot(k, S_c, PREC)
            residual = _targets(v, k, P_c, c, D, BV, PREC) - gamma_prev[:, None] * KS
            Delta = _dot(Tm, eta[:, None] * residual, PREC)

            # S_{n+1} = gamma_end S_n + (K * to_end)^T Delta
            dS = gamma_end * dS_next
            d_log_gamma_end += gamma_end * tl.sum(tl.sum(dS_next * S_c, 1), 0)
            dDelta = _dot(k_to_end, dS_next, PREC)
            d_k_to_end = _dot(Delta, tl.trans(dS_next), PREC)
            dk += d_k_to_end * to_end[:, None]
            z = tl.sum(d_k_to_end * k_to_end, 1)
            d_log_gamma -= z
            d_log_gamma_end += tl.sum(z, 0)

            if (c * BV >= 2 * D) and (c * BV < 3 * D):  # read = gamma (Q S_mem) + (decay * Q K^T) Delta_mem
                dO_c = _load(do_ptr + row0, 0, c * BV - 2 * D, L, BV, D)
                dS += _dot(tl.trans(Q * gamma[:, None]), dO_c, PREC)
                dq += gamma[:, None] * _dot(dO_c, tl.trans(S_c), PREC)
                d_log_gamma += gamma * tl.sum(dO_c * _dot(Q, S_c, PREC), 1)
                dDelta += _dot(tl.trans(decay * QK), dO_c, PREC)
                d_mix += _dot(dO_c, tl.trans(Delta), PREC)

            # Delta = (I + A)^-1 R, R = eta (W - gamma_prev K S_n)
            dR = _dot(tl.trans(Tm), dDelta, PREC)
            dA -= _dot(dR, tl.trans(Delta), PREC)
            d_eta += tl.sum(dR * residual, 1)
            d_log_gamma_prev -= gamma_prev * tl.sum(dR * eta[:, None] * KS, 1)
            dR_scaled = (eta * gamma_prev)[:, None] * dR
            dk -= _dot(dR_scaled, tl.trans(S_c), PREC)
            dS -= _dot(tl.trans(k), dR_scaled, PREC)
            # W = v P_c + [square ? (v - k) E : 0]
            dW = eta[:, None] * dR
            if c * BV < 3 * D:
                dW_columns = _dot(dW, tl.trans(_selection((c * BV) % D, D, BV, dW.dtype)), PREC)
                dk -= dW_columns
                if not DETACH:
                    dv += dW_columns
            if not DETACH:
                dv += _dot(dW, tl.trans(P_c), PREC)
                dP_c = _dot(tl.trans(v), dW, PREC)
                if proj_to_state:
                    dS += dP_c
                else:
                    _add(dp0_base, 0, c * BV, dP_c, D, BV, V)
            _store(dS_base, 0, c * BV, dS, D, BV, V)

        # The read-out's decay * Q K^T
        dq += _dot(d_mix * decay, k, PREC)
        dk += _dot(tl.trans(d_mix * decay), Q, PREC)
        z_mix = tl.where(inclusive, d_mix * decay * QK, 0.0)
        d_log_gamma += tl.sum(z_mix, 1) - tl.sum(z_mix, 0)
        _store(dq_ptr + row0, 0, 0, dq, L, D, D)

        # A_ts = eta_t exp(log_gamma_prev_t - log_gamma_s) k_t.k_s, s < t
        dA = tl.where(strict, dA, 0.0)
        z_A = dA * A
        d_eta += tl.sum(dA * _decay(log_gamma_prev, log_gamma, strict) * _dot(k, tl.trans(k), PREC), 1)
        d_log_gamma_prev += tl.sum(z_A, 1)
        d_log_gamma -= tl.sum(z_A, 0)
        dKK = dA * eta[:, None] * _decay(log_gamma_prev, log_gamma, strict)
        dk += _dot(dKK, k, PREC) + _dot(tl.trans(dKK), k, PREC)

        # log_gamma = cumsum(log_alpha), log_gamma_prev = log_gamma - log_alpha
        d_log_gamma += tl.where(idx == L - 1, d_log_gamma_end, 0.0)
        d_log_alpha = tl.cumsum(d_log_gamma + d_log_gamma_prev, 0, reverse=True) - d_log_gamma_prev
        d_alpha_logit = tl.where(keep, d_log_alpha * (1.0 - alpha), 0.0)
        d_eta_logit = tl.where(keep, d_eta * eta_max * sig_eta * (1.0 - sig_eta), 0.0)
        db_eta += d_eta_logit
        db_alpha += d_alpha_logit

        # k = k_raw / |k_raw| (same for v), k_raw = u + u P_key, v_raw = u + u P_value: by row tiles of P
        dk_raw = (dk - k * tl.sum(dk * k, 1)[:, None]) / k_norm[:, None]
        dv_raw = (dv - v * tl.sum(dv * v, 1)[:, None]) / v_norm[:, None]
        cols = tl.arange(0, BV)
        d_scalars = tl.where(cols[None, :] == 0, d_eta_logit[:, None], 0.0)
        d_scalars += tl.where(cols[None, :] == 1, d_alpha_logit[:, None], 0.0)
        tl.debug_barrier()  # pass 1 stores complete before the projection gradients are added
        for r in tl.static_range(D // BV):
            E_r = _selection(r * BV, D, BV, k.dtype)
            P_key_r = _load(P_base, r * BV, 0, BV, D, V)
            P_value_r = _load(P_base, r * BV, D, BV, D, V)
            dU_r = _dot(dk_raw, tl.trans(P_key_r) + E_r, PREC)
            dU_r += _dot(dv_raw, tl.trans(P_value_r) + E_r, PREC)
            dU_r += _dot(d_scalars, tl.trans(_load(P_base, r * BV, 3 * D, BV, BV, V)), PREC)
            _store(du_ptr + row0, 0, r * BV, dU_r, L, BV, D)
            U_r = _load(u_ptr + row0, 0, r * BV, L, BV, D)
            _add(dP_base, r * BV, 0, _dot(tl.trans(U_r), dk_raw, PREC), BV, D, V)
            _add(dP_base, r * BV, D, _dot(tl.trans(U_r), dv_raw, PREC), BV, D, V)
            _add(dP_base, r * BV, 3 * D, _dot(tl.trans(U_r), d_scalars, PREC), BV, BV, V)
        tl.debug_barrier()
    tl.store(db_eta_ptr + bh, tl.sum(db_eta, 0))
    tl.store(db_alpha_ptr + bh, tl.sum(db_alpha, 0))


def _tile_width(head_dim: int) -> int:
    return min(head_dim, MAX_TILE_WIDTH)


class FusedChunkFunction(torch.autograd.Function):
    """Inputs head-first and chunk-aligned: u, q (B, H, N*L, d); keep (B, N*L); states
    (B, H, d, 3d+2). Returns o (B, H, N*L, d) and every chunk-boundary state h (B, H, N+1, d, 3d+2),
    h[:, :, 0] = initial state, h[:, :, N] = final state."""

    @staticmethod
    def forward(ctx, u, q, keep, b_eta, b_alpha, initial_state, projection_state, chunk_size, eta_max,
                self_referential, detach_values, dot_precision):
        B, H, T, d = u.shape
        num_chunks = T // chunk_size
        h = _output_like(u, B, H, num_chunks + 1, d, state_width(d))
        h[:, :, 0] = initial_state
        o = _output_like(u)
        _fwd_kernel[(B * H,)](
            u, q, keep, b_eta, b_alpha, projection_state, h, o, float(eta_max), num_chunks, H,
            L=chunk_size, D=d, BV=_tile_width(d), SELF_REF=self_referential, PREC=dot_precision,
        )
        ctx.save_for_backward(u, q, keep, b_eta, b_alpha, projection_state, h)
        ctx.settings = (chunk_size, float(eta_max), self_referential, detach_values, dot_precision)
        return o, h

    @staticmethod
    def backward(ctx, d_o, d_h):
        u, q, keep, b_eta, b_alpha, projection_state, h = ctx.saved_tensors
        chunk_size, eta_max, self_referential, detach_values, dot_precision = ctx.settings
        B, H, T, d = u.shape
        du, dq = _output_like(u), _output_like(q)
        d_state = torch.zeros_like(projection_state)
        d_projection = torch.zeros_like(projection_state)
        db_eta, db_alpha = _output_like(u, B * H), _output_like(u, B * H)
        _bwd_kernel[(B * H,)](
            u, q, keep, b_eta, b_alpha, projection_state, h, d_o.contiguous(), d_h.contiguous(),
            du, dq, d_state, d_projection, db_eta, db_alpha, eta_max, T // chunk_size, H,
            L=chunk_size, D=d, BV=_tile_width(d), SELF_REF=self_referential, DETACH=detach_values, PREC=dot_precision,
        )
        d_initial = d_state + d_h[:, :, 0]
        db_eta, db_alpha = (x.view(B, H).sum(0) for x in (db_eta, db_alpha))
        return du, dq, None, db_eta, db_alpha, d_initial, d_projection, None, None, None, None, None


def _operand_precision(dtype: torch.dtype) -> str:
    return "tf32" if dtype in (torch.bfloat16, torch.float16) else "ieee"


def fused_kernel_supports(head_dim: int, chunk_size: int) -> bool:
    """Shapes the fused kernels take: head dims 16, 32, 64 and chunk sizes 16, 32, 64. At d=128
    the backward's d x L register tiles do not fit a GPU's shared memory (docs/kernels.md); the
    op sends d=128 to the fla bridge."""
    return head_dim in (16, 32, 64) and chunk_size in (16, 32, 64)


def fused_chunk_self_referential_gated_delta_rule(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See ``hope_hf.ops.self_referential_gated_delta_rule`` for the arguments."""
    check_inputs(u, q, b_eta, b_alpha, initial_state, initial_chunk_state, attention_mask, chunk_size, chunk_offset)
    B, T, H, d = u.shape
    if not (u.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        raise RuntimeError("the fused Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 set before import)")
    if not fused_kernel_supports(d, chunk_size):
        raise ValueError(
            f"the fused kernel takes head_dim in (16, 32, 64) and chunk_size in (16, 32, 64); "
            f"got head_dim={d}, chunk_size={chunk_size}"
        )
    in_dtype, dtype = u.dtype, compute_dtype(u)
    num_chunks = -(-(chunk_offset + T) // chunk_size)
    pad = (chunk_offset, num_chunks * chunk_size - chunk_offset - T)  # masked tokens before / after
    head_first = lambda x: F.pad(x.transpose(1, 2).to(dtype), (0, 0, *pad)).contiguous()  # (B, H, N*L, d)
    keep = torch.ones(B, T, device=u.device) if attention_mask is None else attention_mask.to(torch.float32)
    keep = F.pad(keep, pad).contiguous()
    state = initial_state.to(dtype).contiguous()
    projection_state = state if initial_chunk_state is None else initial_chunk_state.to(dtype).contiguous()

    o, h = FusedChunkFunction.apply(
        head_first(u), head_first(q), keep, b_eta.to(dtype).contiguous(), b_alpha.to(dtype).contiguous(),
        state, projection_state, chunk_size, eta_max, self_referential, detach_values,
        _operand_precision(in_dtype),
    )
    o = o[:, :, chunk_offset : chunk_offset + T].transpose(1, 2).to(in_dtype)
    final_state = h[:, :, -1]
    if not self_referential:
        chunk_state = projection_state
    elif (chunk_offset + T) % chunk_size == 0:
        chunk_state = final_state
    else:  # the last chunk is partial: the next token still projects from its start state
        chunk_state = h[:, :, -2] if num_chunks > 1 else projection_state
    return o, final_state, chunk_state
