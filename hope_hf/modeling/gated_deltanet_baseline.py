"""Baseline model: a reference Gated DeltaNet mixer (Yang et al. 2024) used by the experiments
(MQAR, the language-model comparison) as the peer of the titans mixer. Not part of Hope: it is
swapped into a Hope block in place of the mixer, so a comparison differs only in the mixer.

Per head, as fla's ``GatedDeltaNet`` layer defines it: q, k (head_dim each) and v (expand_v x
head_dim, fla's default 2) from separate projections, each through a causal short conv and SiLU;
q and k are l2-normalised; beta = sigmoid(W_b x), decay a = exp(g) with g = -exp(A_log) softplus(W_a x + dt_bias)
(the Mamba-2 parametrisation used by fla's GatedDeltaNet layer). The state follows fla's rule
    S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T,   o_t = S_t^T q_t / sqrt(d),
then an RMSNorm gated by SiLU(W_g x) and W_o. A_log and dt_bias are marked ``_no_weight_decay``
(fla's marking; the experiments' optimizers honour it). Training and evaluation only (full
sequences, no cache).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm


def gated_delta_rule(q, k, v, beta, g, scale=None):
    """Gated delta rule over a whole sequence from a zero state, in parallel (UT transform).

    q, k: (B, T, H, d); v: (B, T, H, d_v); beta, g: (B, T, H) with g the log decay. Returns o (B, T, H, d_v).
    delta_t = beta_t (v_t - a_t S_{t-1}^T k_t) solves (I + A) Delta = diag(beta) V with
    A_ts = beta_t (Gamma_t / Gamma_s) k_t.k_s for s < t, Gamma_t = prod_{r<=t} a_r; then
    o_t = sum_{s<=t} (Gamma_t / Gamma_s) (q_t.k_s) delta_s.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = (x.transpose(1, 2).float() for x in (q, k, v))  # (B, H, T, d)
    beta, log_gamma = beta.transpose(1, 2).float(), g.transpose(1, 2).float().cumsum(-1)
    T = q.shape[2]
    inclusive = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    ratio = (log_gamma[..., :, None] - log_gamma[..., None, :]).masked_fill(~inclusive, float("-inf")).exp()
    A = (beta[..., None] * ratio * (k @ k.transpose(-1, -2))).tril(-1)
    delta = torch.linalg.solve_triangular(A, beta[..., None] * v, upper=False, unitriangular=True)
    o = (ratio * (scale * q @ k.transpose(-1, -2))) @ delta
    return o.transpose(1, 2)


class GatedDeltaNetMixer(nn.Module):
    """Drop-in mixer for a HopeDecoderLayer (``forward(hidden_states, attention_mask=None, ...)``)."""

    def __init__(self, config, layer_idx: int, expand_v: float = 2.0):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.head_v_dim = int(self.head_dim * expand_v)
        if self.head_v_dim != self.head_dim * expand_v or self.head_v_dim < 1:
            raise ValueError(f"expand_v must make head_dim * expand_v a positive integer, got {expand_v} "
                             f"with head_dim {self.head_dim}")
        key_dim, value_dim = self.num_heads * self.head_dim, self.num_heads * self.head_v_dim
        self.q_proj = nn.Linear(config.hidden_size, key_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, key_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, value_dim, bias=False)
        channels = 2 * key_dim + value_dim  # one depthwise conv = fla's three separate ones
        self.conv1d = nn.Conv1d(channels, channels, config.titans_conv_size, groups=channels, bias=False)
        self.b_proj = nn.Linear(config.hidden_size, self.num_heads, bias=False)
        self.a_proj = nn.Linear(config.hidden_size, self.num_heads, bias=False)
        self.g_proj = nn.Linear(config.hidden_size, value_dim, bias=False)
        self.o_norm = LlamaRMSNorm(self.head_v_dim, eps=config.rms_norm_eps)
        self.o_proj = nn.Linear(value_dim, config.hidden_size, bias=False)
        # fla's GatedDeltaNet initialisation: A ~ U(0, 16), dt ~ logU(1e-3, 1e-1), dt_bias = softplus^-1(dt)
        self.A_log = nn.Parameter(torch.empty(self.num_heads).uniform_(1e-4, 16).log())
        dt = torch.exp(torch.rand(self.num_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=config.initializer_range)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        B, T, _ = hidden_states.shape
        qkv = torch.cat([self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)], dim=-1)
        kernel = self.conv1d.kernel_size[0]
        qkv = F.silu(F.conv1d(F.pad(qkv.transpose(1, 2), (kernel - 1, 0)), self.conv1d.weight, groups=qkv.shape[-1]))
        key_dim = self.num_heads * self.head_dim
        q, k, v = qkv.transpose(1, 2).split([key_dim, key_dim, qkv.shape[1] - 2 * key_dim], dim=-1)
        q, k = (x.reshape(B, T, self.num_heads, self.head_dim) for x in (q, k))
        v = v.reshape(B, T, self.num_heads, self.head_v_dim)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = torch.sigmoid(self.b_proj(hidden_states))
        g = -self.A_log.exp() * F.softplus(self.a_proj(hidden_states) + self.dt_bias)
        if attention_mask is not None and attention_mask.dim() == 2:  # padding leaves the state untouched
            keep = attention_mask[..., None].bool()
            beta, g = beta.masked_fill(~keep, 0.0), g.masked_fill(~keep, 0.0)
        o = gated_delta_rule(q, k, v, beta, g).to(hidden_states.dtype)
        gate = F.silu(self.g_proj(hidden_states)).view(B, T, self.num_heads, self.head_v_dim)
        return self.o_proj((self.o_norm(o) * gate).reshape(B, T, -1))


def use_gated_deltanet(model, expand_v: float = 2.0) -> None:
    """Replace the mixer of every titans layer of a Hope model by a GatedDeltaNetMixer (in place)."""
    for i, layer in enumerate(model.model.layers):
        if layer.layer_type == "linear_attention":
            layer.mixer = GatedDeltaNetMixer(model.config, i, expand_v)


__all__ = ["GatedDeltaNetMixer", "gated_delta_rule", "use_gated_deltanet"]
