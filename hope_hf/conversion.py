"""From a pretrained Llama to a Hope: attention kept at some layers, self-referential Titans memory
at the others, then distilled from the Llama (docs/conversion.md).

``convert_llama_to_hope`` copies the embeddings, norms, MLPs (as CMS level 0) and the kept
attention layers unchanged, so a conversion that keeps every attention layer computes exactly what
the Llama computes. A titans mixer takes its layer's attention weights where the shapes allow:
W_q -> q_proj, W_k -> u_proj (the memory input), W_v -> v_proj (the value memory's own input,
``titans_value_projection``), W_o -> o_proj, grouped key/value heads repeated to every query head.
Its memories start at the identity (k = u, v = its input), its convolution passes each token
through unchanged, and its output gate starts closed (W_g = 0): before training the layer adds
nothing, as if its attention were removed, and the distillation opens it.

The two stages are training losses for ``hope_hf.training.trainer.train``:
``LayerMatching`` (a): every titans mixer learns to reproduce its layer's attention output from
the teacher's own hidden states; ``LogitDistillation`` (b): KL divergence to the teacher's
next-token distribution.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import find_packed_sequence_indices

from .configuration import HopeConfig
from .modeling import HopeForCausalLM
from .modeling.llama_loading import load_llama
from .training.trainer import document_inputs


def attention_layers(spec: str | None, num_layers: int) -> list[int]:
    """The layers that keep attention: None or "" (none), "0,4,8" (those), or "1/4" (one in four:
    the first layer of every four, 0, 4, 8, ...)."""
    if not spec:
        return []
    spec = spec.strip()
    if "/" in spec:
        one, every = spec.split("/", 1)
        if one.strip() != "1" or not every.strip().isdigit() or int(every) < 1:
            raise ValueError(f"keep_attention as a ratio must be '1/N' with N >= 1, got {spec!r}")
        return list(range(0, num_layers, int(every)))
    try:
        layers = sorted({int(x) for x in spec.split(",")})
    except ValueError:
        raise ValueError(f"keep_attention must be layer indices like '0,4,8' or a ratio like '1/4', got {spec!r}") from None
    if layers[0] < 0 or layers[-1] >= num_layers:
        raise ValueError(f"keep_attention layers must be in [0, {num_layers}), got {spec!r}")
    return layers


def hope_config_from_llama(llama_config, keep_attention: list[int], **overrides) -> HopeConfig:
    """A HopeConfig with the Llama's shapes: attention at ``keep_attention``, titans elsewhere, the
    MLP as the one CMS level. ``overrides`` set other HopeConfig fields (e.g. titans_chunk_size)."""
    c = llama_config
    if getattr(c, "mlp_bias", False):
        raise ValueError("the Llama has mlp_bias=True; a CMS level has no bias")
    fields = dict(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=getattr(c, "head_dim", None), hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        initializer_range=c.initializer_range, tie_word_embeddings=c.tie_word_embeddings,
        rope_parameters=c.rope_parameters, attention_bias=c.attention_bias, attention_dropout=c.attention_dropout,
        pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        mixer=["attention" if i in keep_attention else "titans" for i in range(c.num_hidden_layers)],
        titans_value_projection=True,
    )
    return HopeConfig(**{**fields, **overrides})


def _llama_to_hope_names(llama_name: str) -> str:
    """A Llama state-dict key under the Hope names (embeddings, norms, MLP, attention)."""
    return (llama_name.replace(".input_layernorm.", ".mixer_norm.")
            .replace(".post_attention_layernorm.", ".cms_norm.")
            .replace(".mlp.", ".cms.levels.0.")
            .replace(".self_attn.", ".mixer."))


@torch.no_grad()
def init_titans_from_attention(mixer: nn.Module, attention: nn.Module) -> None:
    """Initialise a HopeTitansMixer (with a value projection) from a LlamaAttention of the same
    shapes; see the module docstring."""
    if mixer.v_proj is None:
        raise ValueError("the titans mixer needs titans_value_projection=True to take the attention's W_v")
    heads, head_dim = mixer.num_heads, mixer.head_dim
    kv_heads = attention.k_proj.weight.shape[0] // head_dim
    groups = heads // kv_heads

    def every_head(weight: torch.Tensor) -> torch.Tensor:  # (kv_heads*d, hidden) -> (heads*d, hidden), GQA order
        return weight.view(kv_heads, head_dim, -1).repeat_interleave(groups, dim=0).reshape(heads * head_dim, -1)

    mixer.q_proj.weight.copy_(attention.q_proj.weight)
    mixer.u_proj.weight.copy_(every_head(attention.k_proj.weight))
    mixer.v_proj.weight.copy_(every_head(attention.v_proj.weight))
    mixer.o_proj.weight.copy_(attention.o_proj.weight)
    mixer.conv1d.weight.zero_()
    mixer.conv1d.weight[..., -1] = 1.0  # the causal conv passes the current token through
    d = head_dim
    first_layer = mixer.initial_state[..., 2 * d : 3 * d].clone()
    mixer.initial_state.zero_()  # memories at the identity
    if mixer.memory_depth == 2:  # an MLP memory keeps its drawn W1 (W2 = 0 is the identity; W1 = W2 = 0 cannot learn)
        mixer.initial_state[..., 2 * d : 3 * d] = first_layer
    mixer.g_proj.weight.zero_()  # the output gate starts closed
    mixer.o_norm.weight.fill_(1.0)


def convert_llama_to_hope(llama, keep_attention: list[int] | str | None = None, **config_overrides) -> HopeForCausalLM:
    """A HopeForCausalLM from a Llama (a LlamaForCausalLM, a folder or a GGUF file): attention
    kept at ``keep_attention`` (indices, or a spec for ``attention_layers``), titans mixers
    initialised from the attention elsewhere (``init_titans_from_attention``), every other weight
    copied. ``config_overrides`` go to ``hope_config_from_llama``."""
    llama = load_llama(llama)
    num_layers = llama.config.num_hidden_layers
    if keep_attention is None or isinstance(keep_attention, str):
        keep_attention = attention_layers(keep_attention, num_layers)
    config = hope_config_from_llama(llama.config, list(keep_attention), **config_overrides)
    hope = HopeForCausalLM(config).to(llama.dtype)
    weights = {}
    for name, tensor in llama.state_dict().items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        if ".self_attn." in name and layer not in keep_attention:
            continue  # a titans layer: initialised from the attention below
        weights[_llama_to_hope_names(name)] = tensor
    missing, unexpected = hope.load_state_dict(weights, strict=False)
    unexpected = [k for k in unexpected if not k.endswith("rotary_emb.inv_freq")]
    not_titans = [k for k in missing if ".mixer." not in k and not (config.tie_word_embeddings and k == "lm_head.weight")]
    if unexpected or not_titans:
        raise ValueError(f"the Llama's weights do not map onto the Hope: unexpected {unexpected}, missing {not_titans}")
    for i, layer in enumerate(hope.model.layers):
        if i not in keep_attention:
            init_titans_from_attention(layer.mixer, llama.model.layers[i].self_attn)
    if config.tie_word_embeddings:
        hope.tie_weights()
    hope.generation_config = llama.generation_config
    return hope.eval()


def titans_mixer_parameters(model: HopeForCausalLM) -> list[nn.Parameter]:
    """The parameters of every titans mixer: what stage (a) trains."""
    return [p for layer in model.model.layers if layer.layer_type == "linear_attention" for p in layer.mixer.parameters()]


def train_only(model: nn.Module, parameters: list[nn.Parameter]) -> int:
    """Freeze every parameter of ``model`` except ``parameters``; returns how many train."""
    keep = {id(p) for p in parameters}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def bf16_autocast(enabled: bool, device: torch.device):
    """torch.autocast to bf16 on ``device`` when enabled, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


class LayerMatching:
    """Stage (a) loss: the mean over titans layers of ||mixer(x) - attention(x)||^2 / ||attention(x)||^2,
    with x and attention(x) the teacher's own input to and output of that layer's attention on the
    batch (forward hooks on the teacher, removed by ``close()``). Call as ``loss(student, input_ids)``.
    ``bf16``: teacher and mixers under bf16 autocast (the loss in fp32). ``eos_token_id``: every
    document of a block read alone, by teacher and student (``document_inputs``)."""

    def __init__(self, teacher, layers: list[int], bf16: bool = False, eos_token_id: int | None = None):
        self.teacher, self.layers, self.captured, self.bf16 = teacher.eval(), list(layers), {}, bf16
        self.eos_token_id = eos_token_id
        self.hooks = [teacher.model.layers[i].self_attn.register_forward_hook(self._capture(i), with_kwargs=True)
                      for i in self.layers]

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.captured.clear()

    def _capture(self, layer: int):
        def hook(module, args, kwargs, output):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self.captured[layer] = (hidden.detach().float(), output[0].detach().float())
        return hook

    def __call__(self, student, input_ids: torch.Tensor) -> torch.Tensor:
        position_ids = document_inputs(input_ids, self.eos_token_id).get("position_ids")
        with torch.no_grad(), bf16_autocast(self.bf16, input_ids.device):
            self.teacher.model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        packed = None if position_ids is None else find_packed_sequence_indices(position_ids)
        losses = []
        for i in self.layers:
            hidden, target = self.captured.pop(i)
            with bf16_autocast(self.bf16, input_ids.device):
                out = student.model.layers[i].mixer(hidden, packed_sequences=packed)
            losses.append((out.float() - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12))
        return torch.stack(losses).mean()


class LogitDistillation:
    """Stage (b) loss: KL(teacher || student) of the next-token distributions, mean over tokens,
    at ``temperature`` (scaled by its square, as in Hinton et al.). Call as ``loss(student, input_ids)``.
    ``bf16``: the teacher under bf16 autocast (the student's precision is its trainer's).
    ``eos_token_id``: every document of a block read alone, by teacher and student."""

    def __init__(self, teacher, temperature: float = 1.0, bf16: bool = False, eos_token_id: int | None = None):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.teacher, self.temperature, self.bf16 = teacher.eval(), temperature, bf16
        self.eos_token_id = eos_token_id

    def __call__(self, student, input_ids: torch.Tensor) -> torch.Tensor:
        position_ids = document_inputs(input_ids, self.eos_token_id).get("position_ids")
        with torch.no_grad(), bf16_autocast(self.bf16, input_ids.device):
            teacher_logits = self.teacher(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        student_logits = student(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        t = self.temperature
        kl = F.kl_div(F.log_softmax(student_logits.float() / t, -1), F.log_softmax(teacher_logits.float() / t, -1),
                      log_target=True, reduction="none").sum(-1)
        return kl.mean() * t * t


__all__ = ["LayerMatching", "LogitDistillation", "attention_layers", "convert_llama_to_hope", "hope_config_from_llama",
           "init_titans_from_attention", "titans_mixer_parameters", "train_only"]
