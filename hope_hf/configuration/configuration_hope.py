"""Hope configuration. Field names follow LlamaConfig wherever the meaning is the same."""

import dataclasses
import difflib
import warnings

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

from ..transformers_compat import CACHE_ARG

MIXERS = ("titans", "attention")
CMS_VARIANTS = ("sequential", "independent", "nested")
CMS_LEVEL_KEYS = ("intermediate_size", "update_period")


def validate_cms_levels(cms_levels, field: str = "cms_levels") -> None:
    """A CMS is a non-empty list of levels {"intermediate_size": int >= 1, "update_period": int >= 1}
    with an optional unique "name"."""
    if not isinstance(cms_levels, (list, tuple)) or len(cms_levels) == 0:
        raise ValueError(f"`{field}` must be a non-empty list of levels with keys {CMS_LEVEL_KEYS}, got {cms_levels!r}")
    names = set()
    for i, level in enumerate(cms_levels):
        if not isinstance(level, dict) or not set(CMS_LEVEL_KEYS) <= set(level) <= {*CMS_LEVEL_KEYS, "name"}:
            raise ValueError(
                f"`{field}[{i}]` must be a dict with the keys {CMS_LEVEL_KEYS} and optionally 'name', got {level!r}"
            )
        for key in CMS_LEVEL_KEYS:
            value = level[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{field}[{i}]['{key}']` must be an int >= 1, got {value!r}")
        if "name" in level:
            if not isinstance(level["name"], str) or level["name"] in names:
                raise ValueError(f"`{field}[{i}]['name']` must be a unique string, got {level['name']!r} (names {sorted(names)})")
            names.add(level["name"])


def warn_misspelt_fields(config_class, extra_keys) -> None:
    """transformers keeps unknown config keys as attributes; one that resembles a field of
    ``config_class`` is most likely a typo, which would otherwise be ignored without a word."""
    own = [f.name for f in dataclasses.fields(config_class)]
    for key in extra_keys:
        close = difflib.get_close_matches(key, own, n=1, cutoff=0.85)
        if key not in own and close:
            warnings.warn(f"{config_class.__name__} got an unknown field {key!r}, kept but unused; did you mean "
                          f"{close[0]!r}?", stacklevel=4)


def validate_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"`{field}` must be one of {allowed}, got {value!r}")


TEST_TIME_RULES = ("sgd", "adam", "rms")
TEST_TIME_LEARNING_KEYS = ("rule", "lr", "segment_size", "periods", "max_grad_norm", "decay")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_test_time_learning(entry, num_levels: int, field: str = "test_time_learning") -> None:
    """None, or the rule ``InContextLearner(model)`` reads with: {"rule": one of TEST_TIME_RULES,
    "lr": a rate >= 0 or one per level, and optionally "segment_size" (int >= 2), "periods" (one
    per level, an int >= 1 or None for frozen; in segments), "max_grad_norm" (None or > 0),
    "decay" (in [0, 1))}."""
    if entry is None:
        return
    if not isinstance(entry, dict) or not {"rule", "lr"} <= set(entry) <= set(TEST_TIME_LEARNING_KEYS):
        raise ValueError(f"`{field}` must be None or a dict with the keys 'rule' and 'lr' and optionally "
                         f"{TEST_TIME_LEARNING_KEYS[2:]}, got {entry!r}")
    validate_choice(f"{field}['rule']", entry["rule"], TEST_TIME_RULES)
    lrs = entry["lr"] if isinstance(entry["lr"], (list, tuple)) else [entry["lr"]]
    if not all(_is_number(lr) and lr >= 0 for lr in lrs) or len(lrs) not in (1, num_levels):
        raise ValueError(f"`{field}['lr']` must be a number >= 0 or a list of {num_levels} (one per level), got {entry['lr']!r}")
    segment_size = entry.get("segment_size", 2)
    if isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size < 2:
        raise ValueError(f"`{field}['segment_size']` must be an int >= 2, got {segment_size!r}")
    periods = entry.get("periods")
    if periods is not None and (
        not isinstance(periods, (list, tuple)) or len(periods) != num_levels
        or not all(p is None or (isinstance(p, int) and not isinstance(p, bool) and p >= 1) for p in periods)
    ):
        raise ValueError(f"`{field}['periods']` must be None or a list of {num_levels} (one per level) ints >= 1 "
                         f"or None (frozen), got {periods!r}")
    clip = entry.get("max_grad_norm")
    if clip is not None and not (_is_number(clip) and clip > 0):
        raise ValueError(f"`{field}['max_grad_norm']` must be None or a number > 0, got {clip!r}")
    decay = entry.get("decay", 0.0)
    if not (_is_number(decay) and 0 <= decay < 1):
        raise ValueError(f"`{field}['decay']` must be a number in [0, 1), got {decay!r}")


@strict
class HopeConfig(PreTrainedConfig):
    r"""
    Configuration of a Hope model: a stack of pre-norm blocks ``h = x + Mixer(norm(x))``,
    ``y = h + CMS(norm(h))`` (Nested Learning, Behrouz et al. 2025, section 8).

    Args:
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
        head_dim, max_position_embeddings, rms_norm_eps, initializer_range, tie_word_embeddings,
        rope_parameters, attention_bias, attention_dropout, use_cache, pad/bos/eos_token_id:
            as in `LlamaConfig`. `num_attention_heads` and `head_dim` also set the titans heads.
        intermediate_size (`int`):
            Hidden size of the default single-level CMS (used when `cms_levels` is None).
        hidden_act (`str`):
            Activation of the CMS SwiGLU MLPs.
        mixer (`str` or `list[str]`):
            "titans" (self-referential Titans memory, Eq 83-93) or "attention" (Hope-Attention:
            RoPE, GQA, SDPA), or one entry per layer for hybrids.
        sliding_window (`int`, *optional*):
            Window of the attention layers; None means full causal attention.
        titans_chunk_size (`int`):
            Tokens per chunk of the self-referential update: projections come from the memory
            state at the start of the chunk (Eq 90). Smaller is closer to Eq 88, larger is faster.
        titans_eta_max (`float`):
            Upper bound of the memories' learning rate, eta = eta_max * sigmoid(.).
        titans_conv_size (`int`):
            Window of the causal depthwise convolutions on the memory input and the query.
        titans_self_referential (`bool`):
            False freezes the projections to the meta-learned initial memories (a Gated-DeltaNet
            like ablation); the memory read-out still learns in context.
        titans_detach_values (`bool`):
            Stop-gradient on the memories' self-generated values.
        titans_value_projection (`bool`):
            False (Eq 90): one input u = conv(W_u x) feeds every memory, so keys and values are
            both functions of u. True gives the value memory its own input, conv(W_v x), as
            attention and Gated DeltaNet have a value projection (one more hidden x H*d matrix).
        titans_normalize_values (`bool`):
            l2-normalise the values the value memory produces (keeps the self-feedback bounded);
            False leaves them unnormalised.
        titans_memory_depth (`int`):
            1: the main memory is a matrix per head, learning by the delta rule (Eq 88). 2: a
            two-layer MLP with a residual, M(x) = x + n(silu(x W1)) W2 (Titans, Section 3.1),
            learning by gradient steps taken at each chunk's start weights (Section 3.2); the
            key, value, rate and decay memories stay linear. Needs `titans_self_referential`.
        titans_memory_init_std (`float`, *optional*):
            Std of the initial memories' deviation from identity (the meta-learned W_box,0).
            None uses `initializer_range`; near 0, k = v = u at start and the first writes are ~0.
        titans_decay_init_min, titans_decay_init_max (`float`):
            Decays alpha = sigmoid(b_alpha) at initialisation, spread linearly over the heads
            from min to max (short to long memory), both in (0, 1). A head keeps alpha^n of a
            write n tokens back, so a low min forgets within a few tokens; docs/mqar.md shows
            how the default min 0.99 was chosen.
        titans_eta_init (`float`):
            Learning rate at initialisation as a fraction of `titans_eta_max` (sets b_eta), in (0, 1).
        cms_levels (`list[dict]`, *optional*):
            Continuum Memory System levels in the order they are applied, each {"intermediate_size": int, "update_period": int}; the period is in
            optimizer steps for training and in tokens for test-time learning (Eq 71).
            Defaults to one level of `intermediate_size` updated every step.
        cms_variant (`str`):
            "sequential" (Eq 73), "independent" (Eq 74, learnable weighted sum) or "nested"
            (Eq 72; its forward is the sequential chain, its learning rule differs).
        test_time_learning (`dict`, *optional*):
            The rule `InContextLearner(model)` learns with while reading when given no options:
            {"rule": "sgd" | "adam" | "rms", "lr": float or one per level, "segment_size": int,
            "periods": one per level (in segments, None = frozen), "max_grad_norm": float | None,
            "decay": float in [0, 1)}; keys left out take InContextLearner's built-in values.
            `hope_hf.test_time.calibrate` picks it on validation documents. None: the built-in
            rule, Eq 71 with SGD at lr 1e-2 on every level at its `update_period`.

    ```python
    >>> from hope_hf import HopeConfig, HopeForCausalLM
    >>> config = HopeConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000)
    >>> model = HopeForCausalLM(config)
    ```
    """

    model_type = "hope"
    keys_to_ignore_at_inference = [CACHE_ARG]

    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 16
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    attention_dropout: int | float | None = 0.0
    mixer: str | list[str] = "titans"
    sliding_window: int | None = None
    layer_types: list[str] | None = None
    titans_chunk_size: int = 64
    titans_eta_max: float = 1.0
    titans_conv_size: int = 4
    titans_self_referential: bool = True
    titans_detach_values: bool = False
    titans_value_projection: bool = False
    titans_normalize_values: bool = True
    titans_memory_depth: int = 1
    titans_memory_init_std: float | None = None
    titans_decay_init_min: float = 0.99
    titans_decay_init_max: float = 0.999
    titans_eta_init: float = 0.5
    cms_levels: list[dict] | None = None
    cms_variant: str = "sequential"
    test_time_learning: dict | None = None

    def __post_init__(self, **kwargs):
        if self.head_dim is None and self.num_attention_heads:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.cms_levels is None:
            self.cms_levels = [{"intermediate_size": self.intermediate_size, "update_period": 1}]
        if isinstance(self.mixer, (list, tuple)):
            self.mixer = list(self.mixer)
        # Checked here, before the derived fields and transformers' own __post_init__ use the values,
        # so a bad value raises a plain ValueError. The method's name does not start with
        # "validate_", so @strict does not run it a second time as a class validator.
        self._check_hope_fields()
        warn_misspelt_fields(type(self), kwargs)
        # layer_types is derived (transformers' caches and masks read it), never set by hand.
        self.layer_types = [self._layer_type(m) for m in self.mixers]
        super().__post_init__(**kwargs)

    @property
    def mixers(self) -> list[str]:
        """The mixer of every layer."""
        if isinstance(self.mixer, str):
            return [self.mixer] * self.num_hidden_layers
        return list(self.mixer)

    def _layer_type(self, mixer: str) -> str:
        if mixer == "titans":
            return "linear_attention"
        return "full_attention" if self.sliding_window is None else "sliding_attention"

    def _check_hope_fields(self):
        """Run once at construction (from ``__post_init__``); every error is a ValueError that names
        the field."""
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "titans_chunk_size",
                      "titans_conv_size", "max_position_embeddings"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{field}` must be an int >= 1, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must divide `hidden_size` ({self.hidden_size})"
            )
        if self.num_key_value_heads < 1 or self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"`num_key_value_heads` ({self.num_key_value_heads}) must be >= 1 and divide "
                f"`num_attention_heads` ({self.num_attention_heads})"
            )
        if isinstance(self.mixer, str):
            validate_choice("mixer", self.mixer, MIXERS)
        else:
            for i, m in enumerate(self.mixer):
                validate_choice(f"mixer[{i}]", m, MIXERS)
            if len(self.mixer) != self.num_hidden_layers:
                raise ValueError(
                    f"`mixer` as a list needs one entry per layer ({self.num_hidden_layers}), got {len(self.mixer)}"
                )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"`sliding_window` must be None or an int >= 1, got {self.sliding_window!r}")
        validate_choice("titans_memory_depth", self.titans_memory_depth, (1, 2))
        if self.titans_memory_depth == 2 and not self.titans_self_referential:
            raise ValueError("`titans_memory_depth` 2 needs `titans_self_referential` True: the memory's gradients are "
                             "taken at each chunk's start weights")
        if self.titans_memory_depth == 2 and self.titans_memory_init_std == 0:
            raise ValueError("`titans_memory_depth` 2 needs `titans_memory_init_std` > 0 (or None): with W1 = W2 = 0 the "
                             "MLP memory and its gradients stay zero")
        if not self.titans_eta_max > 0:
            raise ValueError(f"`titans_eta_max` must be > 0, got {self.titans_eta_max!r}")
        if self.titans_memory_init_std is not None and not self.titans_memory_init_std >= 0:
            raise ValueError(f"`titans_memory_init_std` must be None or >= 0, got {self.titans_memory_init_std!r}")
        for field in ("titans_decay_init_min", "titans_decay_init_max", "titans_eta_init"):
            if not 0 < getattr(self, field) < 1:
                raise ValueError(f"`{field}` must be in (0, 1), got {getattr(self, field)!r}")
        if self.titans_decay_init_min > self.titans_decay_init_max:
            raise ValueError(
                f"`titans_decay_init_min` ({self.titans_decay_init_min}) must be <= `titans_decay_init_max` "
                f"({self.titans_decay_init_max})"
            )
        validate_choice("cms_variant", self.cms_variant, CMS_VARIANTS)
        validate_cms_levels(self.cms_levels)
        validate_test_time_learning(self.test_time_learning, len(self.cms_levels))


__all__ = ["HopeConfig", "validate_cms_levels", "validate_choice", "validate_test_time_learning", "MIXERS",
           "CMS_VARIANTS", "TEST_TIME_RULES"]
