"""Chunked PyTorch path of the self-referential gated delta rule (the CPU path).

Chunks run in sequence (each projects from its start state, Eq 90); inside a chunk of L tokens
the recurrence S_t = alpha_t S_{t-1} + k_t delta_t^T, delta_t = eta_t (w_t - S_{t-1}^T k_t),
is solved in parallel with the UT transform of DeltaNet / Gated DeltaNet:
    (I + A) Delta = diag(eta) (W - diag(gamma_{t-1}) K S_0),
    A_ts = eta_t (gamma_{t-1} / gamma_s) k_t.k_s   for s < t,
with gamma_t the running product of alpha inside the chunk. Autograd provides the backward.
"""

import torch

from .common import memory_slices, scan_chunks


def delta_rule_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk in parallel form. q, k: (B,H,L,d); w: (B,H,L,V); eta, alpha: (B,H,L);
    state: (B,H,d,V). Returns (q_t^T S_t[:, mem] for each t (B,H,L,d), final state)."""
    L, d = q.shape[-2], q.shape[-1]
    mem = memory_slices(d)["memory"]
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See ``hope_hf.ops.self_referential_gated_delta_rule`` for the arguments."""
    return scan_chunks(
        u, q, b_eta, b_alpha, initial_state, chunk_size, eta_max, initial_chunk_state, chunk_offset,
        attention_mask, self_referential, detach_values, segment_fn=delta_rule_chunk,
    )
