"""GPU path: each chunk of the self-referential rule is one call of flash-linear-attention's
``chunk_gated_delta_rule`` (S_t = a_t (I - b_t k k^T) S_{t-1} + b_t k v^T, o_t = S_t^T q_t).

Mapping (docs/design.md, "The op's contract"): g = log(alpha), beta = eta / alpha,
v' = alpha * w, scale = 1. fla's Triton kernels need a GPU; on CPU the mapping is tested by
passing fla's torch reference as ``gated_delta_rule_fn``.
"""

import torch

from .common import memory_slices, scan_chunks


def _fla_chunk_fn(gated_delta_rule_fn):
    def segment(q, k, w, eta, alpha, state):
        kernel_dtype = q.dtype if q.dtype != torch.float64 else torch.float32
        to_fla = lambda x: x.transpose(1, 2).contiguous()  # (B, H, L, .) -> (B, L, H, .)
        out, final = gated_delta_rule_fn(
            q=to_fla(q).to(kernel_dtype),
            k=to_fla(k).to(kernel_dtype),
            v=to_fla(alpha[..., None] * w).to(kernel_dtype),
            g=to_fla(torch.log(alpha)).float(),
            beta=to_fla(eta / alpha).float(),
            scale=1.0,
            initial_state=state.float(),
            output_final_state=True,
        )
        mem = memory_slices(q.shape[-1])["memory"]
        return out[..., mem].transpose(1, 2).to(q.dtype), final.to(state.dtype)

    return segment


def fla_self_referential_gated_delta_rule(
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
    gated_delta_rule_fn=None,
    row_ends: torch.Tensor | None = None,
    *,
    v: torch.Tensor | None = None,
    normalize_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See ``hope_hf.ops.self_referential_gated_delta_rule``. With ``self_referential=False``
    the whole sequence is one kernel call."""
    if gated_delta_rule_fn is None:
        try:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule as gated_delta_rule_fn
        except ImportError as error:
            raise ImportError("The CUDA path needs flash-linear-attention: pip install flash-linear-attention") from error
    return scan_chunks(
        u, q, b_eta, b_alpha, initial_state, chunk_size, eta_max, initial_chunk_state, chunk_offset,
        attention_mask, self_referential, detach_values,
        segment_fn=_fla_chunk_fn(gated_delta_rule_fn), whole_sequence_if_static=True, row_ends=row_ends, v=v,
        normalize_values=normalize_values,
    )
