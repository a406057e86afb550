"""The experiments' language models: Llama, a Gated DeltaNet stack, Hope (titans, hybrid,
attention), each built at a shape and an MLP width, and matched in non-embedding parameters."""

from dataclasses import dataclass, replace

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.modeling.gated_deltanet_baseline import use_gated_deltanet

MODELS = ("llama", "gated_deltanet", "hope_titans", "hope_hybrid", "hope_attention")  # the LM comparison's
# Hope titans with HopeConfig fields changed (defaults in brackets)
TITANS_VARIANTS = {
    "hope_titans_deep": dict(titans_memory_depth=2),  # [1]: a two-layer MLP main memory
    # [False, 4]: the value memory reads its own projection, conv window 2 (docs/mqar.md's two best ablations)
    "hope_titans_value_proj_conv_2": dict(titans_value_projection=True, titans_conv_size=2),
}
ALL_MODELS = (*MODELS, *TITANS_VARIANTS)


@dataclass
class ModelShape:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    vocab_size: int = 4096
    block_size: int = 256
    target_non_embedding: int = 800_000  # every model's MLP width is adjusted to this
    titans_chunk_size: int = 64
    # set explicitly, in case HopeConfig's defaults change (why 0.99: docs/mqar.md)
    titans_decay_init_min: float = 0.99
    titans_decay_init_max: float = 0.999
    cms_periods: tuple = (1, 8)  # Hope's CMS levels: widths (m, m // 2), periods in optimizer steps
    hybrid_pattern: tuple = ("titans", "attention")  # repeated over the layers


def hope_config(shape: ModelShape, mixer, mlp_size: int, cms_periods, **overrides) -> HopeConfig:
    widths = [mlp_size] + [max(1, mlp_size // 2)] * (len(cms_periods) - 1)
    return HopeConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, max_position_embeddings=max(shape.block_size, 64),
        titans_chunk_size=shape.titans_chunk_size, titans_decay_init_min=shape.titans_decay_init_min,
        titans_decay_init_max=shape.titans_decay_init_max, tie_word_embeddings=False,
        cms_levels=[{"intermediate_size": w, "update_period": p} for w, p in zip(widths, cms_periods)],
        mixer=mixer, pad_token_id=0, bos_token_id=1, eos_token_id=2, **overrides,
    )


def build_model(name: str, shape: ModelShape, mlp_size: int):
    """A freshly initialised model ``name`` (one of ALL_MODELS) with MLP width ``mlp_size``."""
    if name == "llama":
        config = LlamaConfig(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=mlp_size,
                             num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
                             max_position_embeddings=max(shape.block_size, 64), tie_word_embeddings=False,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2)
        config._attn_implementation = "sdpa"
        return LlamaForCausalLM(config)
    if name == "gated_deltanet":  # Gated DeltaNet mixer + one plain SwiGLU MLP per block
        model = HopeForCausalLM(hope_config(shape, "titans", mlp_size, cms_periods=(1,)))
        use_gated_deltanet(model)
        return model
    if name in TITANS_VARIANTS:
        return HopeForCausalLM(hope_config(shape, "titans", mlp_size, shape.cms_periods, **TITANS_VARIANTS[name]))
    mixers = {"hope_titans": "titans", "hope_attention": "attention",
              "hope_hybrid": [shape.hybrid_pattern[i % len(shape.hybrid_pattern)] for i in range(shape.num_layers)]}
    if name not in mixers:
        raise ValueError(f"model must be one of {ALL_MODELS}, got {name!r}")
    return HopeForCausalLM(hope_config(shape, mixers[name], mlp_size, shape.cms_periods))


def embedding_parameters(model) -> int:
    tensors = {id(p): p for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    return sum(p.numel() for p in tensors.values())


def non_embedding_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters()) - embedding_parameters(model)


def count_on_meta(name: str, shape: ModelShape, mlp_size: int) -> int:
    with torch.device("meta"):
        return non_embedding_parameters(build_model(name, shape, mlp_size))


def matched_width(count_at, target: int, multiple: int = 8) -> int:
    """The width (a multiple of ``multiple``) whose parameter count ``count_at(width)`` is nearest
    ``target``. The count is affine in the width (up to rounding), so two counts locate it."""
    low, high = 8 * multiple, 64 * multiple
    n_low, n_high = count_at(low), count_at(high)
    exact = low + (target - n_low) * (high - low) / (n_high - n_low)
    candidates = {max(multiple, multiple * round(exact / multiple) + d * multiple) for d in (-1, 0, 1)}
    return min(candidates, key=lambda m: abs(count_at(m) - target))


def matched_mlp_size(name: str, shape: ModelShape, multiple: int = 8) -> int:
    """The MLP width of model ``name`` whose non-embedding count is nearest the shape's target."""
    return matched_width(lambda m: count_on_meta(name, shape, m), shape.target_non_embedding, multiple)


def matched_models(names, shape: ModelShape, tolerance: float = 0.05) -> dict:
    """{name: {"mlp_size", "non_embedding", "embedding"}}; raises if one misses the target by > tolerance."""
    sizes = {}
    for name in names:
        mlp = matched_mlp_size(name, shape)
        with torch.device("meta"):
            model = build_model(name, shape, mlp)
        count = non_embedding_parameters(model)
        if abs(count / shape.target_non_embedding - 1) > tolerance:
            raise ValueError(f"{name}: no MLP width reaches {shape.target_non_embedding:,} non-embedding parameters "
                             f"within {tolerance:.0%} (best {count:,} at width {mlp}); the mixer alone may be too large")
        sizes[name] = {"mlp_size": mlp, "non_embedding": count, "embedding": embedding_parameters(model)}
    return sizes


def model_config(name: str, shape: ModelShape, mlp_size: int) -> dict:
    """The config of model ``name`` as a dict, for a results file."""
    with torch.device("meta"):
        config = build_model(name, shape, mlp_size).config.to_dict()
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "transformers_version"}


SHAPE_FIELDS = ("hidden_size", "num_layers", "num_heads", "vocab_size", "block_size", "target_non_embedding",
                "titans_chunk_size")


def add_shape_arguments(parser) -> None:
    for name in SHAPE_FIELDS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, help="override the model shape's " + name)


def shape_from_args(args, shape: ModelShape | None = None) -> ModelShape:
    """``shape`` (default: ModelShape()) with the fields given on the command line."""
    shape = shape or ModelShape()
    return replace(shape, **{k: getattr(args, k) for k in SHAPE_FIELDS if getattr(args, k, None) is not None})
