"""Hope: self-referential Titans memory + Continuum Memory System (Nested Learning, section 8).

One block (docs/design.md, "The block"):
    h = x + Mixer(RMSNorm(x))      Mixer = HopeTitansMixer ("titans") | LlamaAttention ("attention")
    y = h + CMS(RMSNorm(h))        CMS   = ContinuumMemorySystem (Eq 70-74)
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, LinearAttentionCacheLayerMixin
from transformers.generation import GenerationMixin
from transformers.masking_utils import (
    find_packed_sequence_indices,
    create_causal_mask,
    create_recurrent_attention_mask,
    create_sliding_window_causal_mask,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.utils import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from ..configuration.configuration_hope import HopeConfig
from ..ops.deep_memory import deep_state_width
from ..ops.self_referential import self_referential_gated_delta_rule, state_width
from ..remote_code import RemoteCodeMixin
from ..transformers_compat import CACHE_ARG, accepts_past_key_values, output_cache


class SwiGLU(nn.Module):
    """down(act(gate(x)) * up(x)): the MLP of one CMS level (names as in LlamaMLP)."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class ContinuumMemorySystem(nn.Module):
    """An ordered chain of MLP levels, each with its own update period (Eq 70-74).

    sequential / nested (Eq 73 / 72): z_1 = MLP_1(x), z_l = z_{l-1} + MLP_l(norm_l(z_{l-1})), out z_k
    independent (Eq 74):             out = sum_l w_l * MLP_l(x), w learnable
    The input x is already normalised by the block. Level 1 has no inner norm, so a pretrained
    MLP can serve as level 1 unchanged (LlamaCMSMLP keeps it outside ``levels``, under its
    original names: ``num_external_levels = 1``). Update periods act in CMSSchedule and
    InContextLearner, which find the levels through ``level_parameters()``, not in this forward.
    """

    num_external_levels = 0  # leading levels a subclass provides itself

    def __init__(self, hidden_size: int, levels: list[dict], variant: str, hidden_act: str, eps: float):
        super().__init__()
        self.variant = variant
        self.update_periods = [level["update_period"] for level in levels]
        self.levels = nn.ModuleList(
            SwiGLU(hidden_size, lv["intermediate_size"], hidden_act) for lv in levels[self.num_external_levels :]
        )
        if variant == "independent":
            self.level_weights = nn.Parameter(torch.ones(len(levels)))
        else:
            self.norms = nn.ModuleList(LlamaRMSNorm(hidden_size, eps=eps) for _ in levels[1:])

    def level_modules(self) -> list:
        """The callables of every level, in order."""
        return list(self.levels)

    def level_parameters(self) -> list[list[nn.Parameter]]:
        """The parameters of every level, in order (what the CMS update rule acts on)."""
        return [list(level.parameters()) for level in self.levels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.level_modules()
        if self.variant == "independent":
            return sum(w * level(x) for w, level in zip(self.level_weights, levels))
        z = levels[0](x)
        for norm, level in zip(self.norms, levels[1:]):
            z = z + level(norm(z))
        return z


class HopeCache(DynamicCache):
    """transformers' DynamicCache (LinearAttentionLayer for titans layers, K/V for attention
    layers) that also counts tokens: the positions seen, so that ``generate()`` works when every
    layer is recurrent, and the real tokens seen per row, which fix each row's place in its
    memory chunk (rows of a left-padded batch differ).

    Its batch methods (``reorder_cache``, ``batch_select_indices``, ``batch_repeat_interleave``)
    move every state a row has: keys and values, the titans layers' conv and recurrent states
    (which transformers' LinearAttentionLayer does not select or repeat itself) and the tokens
    seen per row. They bind new tensors and never write into the old ones, so a shallow copy of
    the cache and its layers can be selected without changing the original."""

    def __init__(self, config=None, **kwargs):
        super().__init__(config=config, **kwargs)
        self.positions_seen = 0
        self.row_tokens_seen: torch.Tensor | None = None

    @property
    def is_compileable(self) -> bool:
        return False  # per-row chunk phases make the decode step data-dependent

    @property
    def is_croppable(self) -> bool:
        # A titans layer keeps only its last state, so a crop (assisted decoding) cannot roll it back.
        return not any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in self.layers) and super().is_croppable

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions seen: the keys held by attention layer ``layer_idx``, or by the first attention layer
        when ``layer_idx`` is a titans layer (whose conv-update count is not a length), or
        ``positions_seen`` when every layer is recurrent."""
        attention = [i for i, layer in enumerate(self.layers) if isinstance(layer, CacheLayerMixin)]
        if not attention:
            return self.positions_seen
        return super().get_seq_length(layer_idx if layer_idx in attention else attention[0])

    def advance(self, batch_size: int, seq_len: int, mask: torch.Tensor | None, device: torch.device) -> None:
        """Record one forward of ``seq_len`` positions; ``mask`` (B, seq_len) marks real tokens."""
        new_tokens = torch.full((batch_size,), seq_len, device=device) if mask is None else mask.sum(-1)
        previous = 0 if self.row_tokens_seen is None else self.row_tokens_seen
        self.row_tokens_seen = (previous + new_tokens).long()
        self.positions_seen += seq_len

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        if self.row_tokens_seen is not None:
            self.row_tokens_seen = self.row_tokens_seen.index_select(0, beam_idx.to(self.row_tokens_seen.device))

    def _map_states(self, fn, attention_fn) -> None:
        """Replace every recurrent state and the tokens seen per row by ``fn(state)``; attention
        layers get ``attention_fn(layer)``."""
        for layer in self.layers:
            if isinstance(layer, LinearAttentionCacheLayerMixin):
                layer.conv_states = {i: None if t is None else fn(t) for i, t in layer.conv_states.items()}
                layer.recurrent_states = {i: None if t is None else fn(t) for i, t in layer.recurrent_states.items()}
            if isinstance(layer, CacheLayerMixin):
                attention_fn(layer)
        if self.row_tokens_seen is not None:
            self.row_tokens_seen = fn(self.row_tokens_seen)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows ``indices`` (in that order) of every state, in place."""
        indices = torch.as_tensor(indices)
        self._map_states(lambda t: t[indices.to(t.device)], lambda layer: layer.batch_select_indices(indices))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every batch row ``repeats`` times (row b becomes rows b*repeats .. b*repeats+repeats-1), in place."""
        self._map_states(lambda t: t.repeat_interleave(repeats, dim=0), lambda layer: layer.batch_repeat_interleave(repeats))

    def detach(self) -> "HopeCache":
        """Cut the autograd history of every tensor held (keys, values, conv and recurrent states), in place."""

        def detach_keys_and_values(layer):
            if layer.keys is not None:
                layer.keys, layer.values = layer.keys.detach(), layer.values.detach()

        self._map_states(torch.Tensor.detach, detach_keys_and_values)
        return self

    def drop_padding_after(self, length: int) -> None:
        """Forget the positions from ``length`` on, which must have been padding (attention mask 0)
        in every row, in place: attention layers keep the keys and values of the first ``length``
        positions and ``positions_seen`` becomes ``length``. Recurrent states, which padding never
        entered, and the tokens seen per row stay as they are. A sliding-window layer past its
        window cannot give positions back (transformers' ``crop`` raises)."""
        for layer in self.layers:
            if isinstance(layer, CacheLayerMixin) and layer.get_seq_length() > length:
                layer.crop(length - layer.get_seq_length())
        self.positions_seen = min(self.positions_seen, length)


class HopeTitansMixer(nn.Module):
    """Self-referential Titans memory (Eq 83-93, chunk-wise Eq 90), per head of width d.

    u = l2norm(conv(W_u x)), q = l2norm(conv(W_q x)); the memories M_k, M_v, M_mem, M_eta,
    M_alpha (one stacked state of shape d x (3d+2) per head, see hope_hf.ops) produce keys,
    values, rates and decays from u (values from l2norm(conv(W_v x)) with
    `titans_value_projection`), generate their own targets and learn in context by the delta
    rule; o = M_mem(q), then a gated RMSNorm and W_o. With `titans_memory_depth=2` M_mem is a
    two-layer MLP (hope_hf.ops.deep_memory) and the state is d x (4d+2).

    Cache (transformers' LinearAttentionLayer): conv state (B, n*H*d, conv_size-1), n = 2 inputs
    (u, q) or 3 (u, q, v), and a recurrent state (B, H, 2, d, width) = (running state, state at
    the start of the current chunk); HopeCache counts the tokens each row has seen. O(1) in
    sequence length.
    """

    def __init__(self, config: HopeConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.chunk_size = config.titans_chunk_size
        self.eta_max = config.titans_eta_max
        self.self_referential = config.titans_self_referential
        self.detach_values = config.titans_detach_values
        self.normalize_values = config.titans_normalize_values
        self.memory_depth = config.titans_memory_depth
        inner = self.num_heads * self.head_dim

        self.u_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.q_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, inner, bias=False) if config.titans_value_projection else None
        # One causal depthwise conv over the channels of [u, q(, v)], so the cache holds one conv state.
        channels = (2 if self.v_proj is None else 3) * inner
        self.conv1d = nn.Conv1d(channels, channels, config.titans_conv_size, groups=channels, bias=False)
        # Meta-learned initial memories W_box,0 (Eq 72-73 analog), stacked: (H, d, 3d+2), or (H, d, 4d+2)
        # with a two-layer main memory (hope_hf.ops.deep_memory).
        width = state_width(self.head_dim) if self.memory_depth == 1 else deep_state_width(self.head_dim)
        self.initial_state = nn.Parameter(torch.zeros(self.num_heads, self.head_dim, width))
        self.b_eta = nn.Parameter(torch.zeros(self.num_heads))
        self.b_alpha = nn.Parameter(torch.zeros(self.num_heads))
        self.g_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.o_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.o_proj = nn.Linear(inner, config.hidden_size, bias=False)

    def _conv(self, x: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise conv + SiLU. x: (B, T, C); conv_state: (B, C, K-1) previous inputs.
        Returns (B, T, C) and the new conv state."""
        x = torch.cat([conv_state.to(x.dtype), x.transpose(1, 2)], dim=-1)
        if x.shape[-1] == self.conv1d.kernel_size[0]:  # one window (decoding): a product, not a conv call
            out = (x * self.conv1d.weight[:, 0].to(x.dtype)).sum(-1, keepdim=True)
        else:
            out = F.conv1d(x, self.conv1d.weight, groups=x.shape[1])
        return F.silu(out).transpose(1, 2), x[..., x.shape[-1] - conv_state.shape[-1] :]

    def _run_memory(self, mixed, state, output_final_state=True, **op_options):
        """Normalise u, q (and v) and run the memory op. mixed: (B, T, n*H*d) after the conv;
        state: (N, H, 2, d, width). Returns o (B, T, H, d) and the final state (N, H, 2, d, width)."""
        B, T, _ = mixed.shape
        inputs = mixed.view(B, T, -1, self.num_heads, self.head_dim).unbind(2)
        # in fp32 at least: F.normalize's eps underflows in fp16, and a zero input (a padding embedding) gives NaN
        norm_dtype = torch.promote_types(mixed.dtype, torch.float32)
        u, q, *v = (F.normalize(t.to(norm_dtype), dim=-1).to(t.dtype) for t in inputs)
        return self_referential_gated_delta_rule(
            u, q, self.b_eta, self.b_alpha, initial_state=state, chunk_size=self.chunk_size, eta_max=self.eta_max,
            v=v[0] if v else None, normalize_values=self.normalize_values, self_referential=self.self_referential,
            detach_values=self.detach_values, output_final_state=output_final_state, memory_depth=self.memory_depth,
            **op_options,
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        packed_sequences: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """``packed_sequences`` (B, T): the index of the sequence (document) each token belongs to
        within its row, from position_ids that restart (transformers' find_packed_sequence_indices);
        every sequence then starts from the initial memory and an empty conv window."""
        B, T, _ = hidden_states.shape
        projections = (self.u_proj, self.q_proj) if self.v_proj is None else (self.u_proj, self.q_proj, self.v_proj)
        projected = torch.cat([proj(hidden_states) for proj in projections], dim=-1)
        initial = self.initial_state.unsqueeze(0).expand(B, -1, -1, -1)
        conv_state = projected.new_zeros(B, projected.shape[-1], self.conv1d.kernel_size[0] - 1)
        state, seen = torch.stack([initial, initial], dim=2), None  # (B, H, 2, d, width): running, chunk-start
        if cache is not None and cache.get_recurrent_state(self.layer_idx) is not None:
            # clones: the cache updates its buffers in place, which must not touch autograd's inputs
            conv_state = cache.get_conv_state(self.layer_idx).clone()
            state = cache.get_recurrent_state(self.layer_idx).clone()
            seen = cache.row_tokens_seen
        if not self.self_referential:  # projections stay with the meta-learned memories
            state = torch.stack([state[:, :, 0], initial], dim=2)

        if seen is not None and T == 1:
            o, conv_state, state = self._decode_step(projected, conv_state, state, seen, attention_mask)
        elif (packed_sequences is None and (attention_mask is None or bool(attention_mask.all()))
              and (seen is None or bool((seen == seen[0]).all()))):  # every token real, one chunk phase
            mixed, conv_state = self._conv(projected, conv_state)
            offset = 0 if seen is None else int(seen[0]) % self.chunk_size
            o, state = self._run_memory(mixed, state, chunk_offset=offset)
        else:
            o, conv_state, state = self._ragged(projected, conv_state, state, seen, attention_mask, packed_sequences,
                                                keep_state=cache is not None)

        if cache is not None:
            cache.update_conv_state(conv_state, self.layer_idx)
            cache.update_recurrent_state(state, self.layer_idx)
        return self._output(o, hidden_states)

    def _output(self, o: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """The gated RMSNorm and W_o: o (B, T, H, d) -> (B, T, hidden)."""
        B, T, _ = hidden_states.shape
        gate = F.silu(self.g_proj(hidden_states)).view(B, T, self.num_heads, self.head_dim)
        return self.o_proj((self.o_norm(o) * gate).reshape(B, T, -1))

    def _ragged(self, projected, conv_state, state, seen, mask, packed_sequences, keep_state=True):
        """Padded rows, rows at different chunk phases, or packed documents: every row's real
        tokens (each document of a packed row) become one sequence of the op's ``cu_seqlens``,
        convolved from its row's conv state and continued at its row's chunk phase. Rows with no
        real token keep their states. projected: (B, T, n*H*d); state: (B, H, 2, d, width).
        Returns o (B, T, H, d), the conv states and the states of the rows (with ``keep_state``
        False, or for packed rows, which are never continued, the states given)."""
        B, T, width = projected.shape
        device, K1 = projected.device, conv_state.shape[-1]
        real = torch.ones(B, T, dtype=torch.bool, device=device) if mask is None else mask.bool()
        rows = torch.arange(B, device=device)[:, None].expand(B, T)
        ids = rows if packed_sequences is None else packed_sequences + rows * (int(packed_sequences.max()) + 1)
        positions = real.flatten().nonzero().squeeze(-1)  # flat (row, token) index of each real token, in order
        if positions.numel() == 0:  # nothing new in any row
            return projected.new_zeros(B, T, self.num_heads, self.head_dim), conv_state, state
        _, lengths = torch.unique_consecutive(ids.flatten()[positions], return_counts=True)
        starts = lengths.cumsum(0) - lengths  # each sequence's first token among the real tokens
        row_of = positions[starts] // T  # (N,)
        phase = 0 if seen is None or packed_sequences is not None else (seen.to(device)[row_of] % self.chunk_size)

        # One packed row of [conv state of its row, tokens] per sequence: a depthwise conv over it
        # sees inside each token's window only its own sequence and the conv state before it.
        N, total = lengths.numel(), positions.numel()
        segment_starts = starts + K1 * torch.arange(N, device=device)  # in the extended row
        sequence_of = torch.repeat_interleave(torch.arange(N, device=device), lengths)  # (total,)
        token_at = segment_starts[sequence_of] + K1 + torch.arange(total, device=device) - starts[sequence_of]
        prefix_at = (segment_starts[:, None] + torch.arange(K1, device=device)).flatten()
        prefix = conv_state if packed_sequences is None else torch.zeros_like(conv_state)
        extended = projected.new_zeros(total + N * K1, width).index_put(
            (torch.cat([prefix_at, token_at]),),
            torch.cat([prefix[row_of].transpose(1, 2).reshape(-1, width).to(projected.dtype),
                       projected.reshape(B * T, width)[positions]]))
        convolved = F.conv1d(extended.T[None], self.conv1d.weight, groups=width)[0].T  # output p: window ending at p+K1
        mixed = F.silu(convolved[token_at - K1])

        cu_seqlens = F.pad(lengths.cumsum(0), (1, 0))
        keep_state = keep_state and packed_sequences is None  # the model refuses a cache with packed rows
        o, new_state = self._run_memory(mixed[None], state[row_of], output_final_state=keep_state,
                                        cu_seqlens=cu_seqlens, chunk_offset=phase)
        o = o.new_zeros(B * T, self.num_heads, self.head_dim).index_put((positions,), o[0])
        if not keep_state:
            return o.view(B, T, self.num_heads, self.head_dim), conv_state, state
        tail_at = (segment_starts + lengths)[:, None] + torch.arange(K1, device=device)  # last K-1 inputs: (N, K-1)
        conv_state = conv_state.index_put((row_of,), extended[tail_at].transpose(1, 2).to(conv_state.dtype))
        state = state.index_put((row_of,), new_state.to(state.dtype))
        return o.view(B, T, self.num_heads, self.head_dim), conv_state, state

    def _decode_step(self, projected, conv_state, state, seen, mask):
        """One token per row; rows may sit at different positions in their chunk."""
        on_cpu = not projected.is_cuda  # on CPU skip what no row needs; on CUDA that check would sync every token
        valid = None if mask is None or (on_cpu and bool(mask[:, -1].all())) else mask[:, -1].bool()
        mixed, new_conv = self._conv(projected, conv_state)
        o, new_state = self._run_memory(mixed, state, attention_mask=None if valid is None else valid[:, None])
        conv_state = new_conv if valid is None else torch.where(valid[:, None, None], new_conv, conv_state)
        running, chunk_state = new_state[:, :, 0], state[:, :, 1]
        starts_chunk = (seen.to(running.device) + 1) % self.chunk_size == 0
        if valid is not None:
            starts_chunk &= valid
        if self.self_referential and (not on_cpu or bool(starts_chunk.any())):
            chunk_state = torch.where(starts_chunk[:, None, None, None], running, chunk_state)
        return o, conv_state, torch.stack([running, chunk_state], dim=2)


class HopeDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: HopeConfig, layer_idx: int):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.mixer_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if config.mixers[layer_idx] == "titans":
            self.mixer = HopeTitansMixer(config, layer_idx)
        else:
            self.mixer = LlamaAttention(config, layer_idx)
        self.cms_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.cms = ContinuumMemorySystem(
            config.hidden_size, config.cms_levels, config.cms_variant, config.hidden_act, config.rms_norm_eps
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        mixer_in = self.mixer_norm(hidden_states)
        if self.layer_type == "linear_attention":
            mixed = self.mixer(mixer_in, attention_mask=attention_mask, cache=cache,
                               packed_sequences=kwargs.pop("packed_sequences", None))
        else:
            kwargs.pop("packed_sequences", None)  # attention gets the block-diagonal mask instead
            mixed, _ = self.mixer(  # LlamaAttention: its weights are recorded by a hook (output_attentions)
                mixer_in, position_embeddings=position_embeddings, attention_mask=attention_mask,
                **{CACHE_ARG: cache}, **kwargs,
            )
        hidden_states = hidden_states + mixed
        return hidden_states + self.cms(self.cms_norm(hidden_states))


class HopePreTrainedModel(RemoteCodeMixin, PreTrainedModel):
    config: HopeConfig
    config_class = HopeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HopeDecoderLayer"]
    _skip_keys_device_placement = [CACHE_ARG]
    _supports_sdpa = True
    _supports_flash_attn = False
    _is_stateful = True
    # what output_hidden_states / output_attentions collect, by forward hooks (transformers' capture_outputs)
    _can_record_outputs = {"hidden_states": HopeDecoderLayer, "attentions": LlamaAttention}

    remote_auto_map = {
        "AutoConfig": "configuration_hope.HopeConfig",
        "AutoModel": "modeling_hope.HopeModel",
        "AutoModelForCausalLM": "modeling_hope.HopeForCausalLM",
    }

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, HopeTitansMixer):
            std = self.config.titans_memory_init_std
            init.normal_(module.initial_state, mean=0.0, std=self.config.initializer_range if std is None else std)
            init.constant_(module.b_eta, torch.logit(torch.tensor(self.config.titans_eta_init)).item())
            # decays alpha = sigmoid(b_alpha) spread over heads from min to max (short to long memory)
            alphas = torch.linspace(
                self.config.titans_decay_init_min, self.config.titans_decay_init_max, module.num_heads, dtype=torch.float64
            )
            init.copy_(module.b_alpha, torch.logit(alphas).to(module.b_alpha.dtype))
        elif isinstance(module, ContinuumMemorySystem) and hasattr(module, "level_weights"):
            init.ones_(module.level_weights)


class HopeModel(HopePreTrainedModel):
    def __init__(self, config: HopeConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(HopeDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.has_attention = any(t != "linear_attention" for t in config.layer_types)
        self.rotary_emb = LlamaRotaryEmbedding(config=config) if self.has_attention else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @accepts_past_key_values
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if cache is not None and not isinstance(cache, HopeCache):
            raise TypeError(f"cache must be a HopeCache, got {type(cache).__name__}")
        check_model_inputs(self.config, input_ids, inputs_embeds, attention_mask,
                           cache.get_seq_length() if cache is not None else 0)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        packed = None  # sequences packed into rows: position_ids that restart, no mask, no cache (as transformers' masks)
        if position_ids is not None and attention_mask is None and cache is None:
            packed = find_packed_sequence_indices(position_ids.expand(inputs_embeds.shape[0], -1))
        if packed is not None:
            if use_cache:
                raise ValueError("position_ids that restart (sequences packed into a row) cannot be read into a cache: "
                                 "pass use_cache=False")
            use_cache = False
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if not use_cache:
            cache = None
        elif cache is None:
            cache = HopeCache(config=self.config)
        elif not isinstance(cache, HopeCache):
            raise TypeError(f"cache must be a HopeCache, got {type(cache).__name__}")

        mask_kwargs = {
            "config": self.config,
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask,
            CACHE_ARG: cache,
            "position_ids": position_ids,
        }
        masks = {"linear_attention": create_recurrent_attention_mask(**mask_kwargs)}
        position_embeddings = None
        if self.has_attention:
            if position_ids is None:
                past_seen = cache.get_seq_length() if cache is not None else 0
                position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen
                position_ids = position_ids.unsqueeze(0)
                mask_kwargs["position_ids"] = position_ids
            if self.config.sliding_window is None:
                masks["full_attention"] = create_causal_mask(**mask_kwargs)
            else:
                masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
            position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=masks[layer.layer_type],
                position_embeddings=position_embeddings,
                cache=cache,
                packed_sequences=packed,
                **kwargs,
            )
        if cache is not None:
            cache.advance(*inputs_embeds.shape[:2], masks["linear_attention"], inputs_embeds.device)
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_ARG: cache})


FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_token_ids(name: str, ids: torch.Tensor, vocab_size: int, ignore_index: int | None = None) -> None:
    """Ids of a (batch, seq_len) tensor lie in [0, vocab_size) (or equal ``ignore_index``). Checked
    on CPU only: on an accelerator, reading the min and max would wait for the device every step."""
    if ids.device.type != "cpu" or ids.numel() == 0:
        return
    valid = ids if ignore_index is None else ids[ids != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= vocab_size):
        bad = valid[(valid < 0) | (valid >= vocab_size)][0]
        raise ValueError(f"{name} must hold token ids in [0, vocab_size={vocab_size})"
                         f"{'' if ignore_index is None else f' or {ignore_index}'}, got {int(bad)}")


def check_model_inputs(config, input_ids, inputs_embeds, attention_mask, past_length: int) -> None:
    """Shapes, dtypes and ids of HopeModel's inputs; every error names the argument."""
    if input_ids is not None:
        if input_ids.dim() != 2 or input_ids.dtype in (torch.bool, *FLOATING):
            raise ValueError(f"input_ids must be an integer tensor of shape (batch, seq_len), got {input_ids.dtype} "
                             f"of shape {tuple(input_ids.shape)}")
        check_token_ids("input_ids", input_ids, config.vocab_size)
        batch, length = input_ids.shape
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(f"inputs_embeds must have shape (batch, seq_len, hidden_size={config.hidden_size}), "
                             f"got {tuple(inputs_embeds.shape)}")
        batch, length = inputs_embeds.shape[:2]
    if length == 0:
        raise ValueError("input_ids must hold at least one token (seq_len >= 1), got seq_len 0")
    if attention_mask is not None and attention_mask.dim() == 2 and tuple(attention_mask.shape) != (batch, past_length + length):
        raise ValueError(f"attention_mask must have shape (batch, past + seq_len) = ({batch}, {past_length + length}) "
                         f"({past_length} tokens in the cache), got {tuple(attention_mask.shape)}")


class HopeForCausalLM(HopePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the first forward of generate() creates a HopeCache

    def __init__(self, config: HopeConfig):
        super().__init__(config)
        self.model = HopeModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def generate(self, inputs: torch.Tensor | None = None, *args, **kwargs):
        """GenerationMixin.generate, after the checks of ``forward`` on the prompt: transformers'
        own errors for a bad prompt or mask name neither. With ``prefill_chunk_size`` the prompt
        is read in pieces of that many tokens through a HopeCache made here (transformers' chunked
        prefill needs a cache before the first forward)."""
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        if isinstance(ids, torch.Tensor) and not ids.is_floating_point():
            cache = kwargs.get(CACHE_ARG)
            past = cache.get_seq_length() if isinstance(cache, HopeCache) else 0
            check_model_inputs(self.config, ids, None, kwargs.get("attention_mask"), past)
        generation_config = kwargs.get("generation_config") or self.generation_config
        chunked = kwargs.get("prefill_chunk_size", getattr(generation_config, "prefill_chunk_size", None))
        if chunked and kwargs.get(CACHE_ARG) is None and kwargs.get("use_cache", generation_config.use_cache):
            kwargs[CACHE_ARG] = HopeCache(config=self.config)
        return super().generate(inputs, *args, **kwargs)

    @accepts_past_key_values
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            if input_ids is not None and labels.shape != input_ids.shape:
                raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
            check_token_ids("labels", labels, self.config.vocab_size, ignore_index=-100)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_ARG: output_cache(outputs)},
        )


__all__ = ["HopeCache", "HopeForCausalLM", "HopeModel", "HopePreTrainedModel", "ContinuumMemorySystem", "HopeTitansMixer"]
