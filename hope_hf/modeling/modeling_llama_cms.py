"""Llama + CMS: the installed transformers Llama with each layer's MLP turned into a Continuum
Memory System whose level 0 IS the pretrained MLP (same gate_proj / up_proj / down_proj names,
so a Llama state dict loads key-for-key) and whose new levels start with zero down projections:
at initialisation the model computes exactly what the Llama computed (docs/design.md, "Llama + CMS").
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel

from ..configuration.configuration_llama_cms import LlamaCMSConfig
from ..remote_code import RemoteCodeMixin
from .llama_loading import load_llama
from .modeling_hope import ContinuumMemorySystem

DEFAULT_NEW_LEVELS = (  # (name, fraction of the pretrained intermediate size, period)
    ("slow", 0.25, 16),
    ("fast", 0.25, 1),
)
DEFAULT_PRETRAINED_PERIOD = 256
# the rule a retrofit reads with (config.test_time_learning): Adam with clipping on the new levels,
# the pretrained MLP frozen; SGD at InContextLearner's built-in 1e-2 wrecks pretrained weights
# (docs/evaluation.md, "Defaults each model carries")
PRETRAINED_TEST_TIME_RULE = {"rule": "adam", "lr": 1e-5, "max_grad_norm": 1.0, "segment_size": 128}


class LlamaCMSMLP(ContinuumMemorySystem):
    """CMS in place of LlamaMLP. Level 0 is LlamaMLP's own projections, under LlamaMLP's names."""

    num_external_levels = 1

    def __init__(self, config: LlamaCMSConfig):
        super().__init__(config.hidden_size, config.cms_levels, config.cms_variant, config.hidden_act, config.rms_norm_eps)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]
        for level in self.levels:  # new levels add nothing at initialisation
            level.down_proj.zero_init = True

    def pretrained_mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    def level_modules(self) -> list:
        return [self.pretrained_mlp, *self.levels]

    def level_parameters(self) -> list[list[nn.Parameter]]:
        pretrained = [*self.gate_proj.parameters(), *self.up_proj.parameters(), *self.down_proj.parameters()]
        return [pretrained, *super().level_parameters()]


class LlamaCMSInitMixin:
    """``_init_weights`` of both Llama-CMS classes (transformers initialises a sub-model with its
    own ``_init_weights``)."""

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        # (per parameter-holding module: transformers skips custom modules without direct parameters)
        if getattr(module, "zero_init", False):
            init.zeros_(module.weight)
        elif isinstance(module, LlamaCMSMLP) and hasattr(module, "level_weights"):
            init.ones_(module.level_weights)


class LlamaCMSModel(LlamaCMSInitMixin, LlamaModel):
    config_class = LlamaCMSConfig

    def __init__(self, config: LlamaCMSConfig):
        super().__init__(config)
        for layer in self.layers:
            layer.mlp = LlamaCMSMLP(config)
        self.post_init()


class LlamaCMSForCausalLM(RemoteCodeMixin, LlamaCMSInitMixin, LlamaForCausalLM):
    config_class = LlamaCMSConfig
    remote_auto_map = {
        "AutoConfig": "configuration_llama_cms.LlamaCMSConfig",
        "AutoModel": "modeling_llama_cms.LlamaCMSModel",
        "AutoModelForCausalLM": "modeling_llama_cms.LlamaCMSForCausalLM",
    }

    def __init__(self, config: LlamaCMSConfig):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LlamaCMSModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_llama(
        cls,
        llama,
        cms_levels: list[dict] | None = None,
        cms_variant: str = "sequential",
        pretrained_update_period: int = DEFAULT_PRETRAINED_PERIOD,
        warm_start: bool = False,
        gguf_file: str | None = None,
        test_time_learning: dict | None = PRETRAINED_TEST_TIME_RULE,
    ) -> "LlamaCMSForCausalLM":
        """Retrofit a Llama with a CMS that computes exactly what it computed.

        Args:
            llama: a LlamaForCausalLM, a directory of one, or a ``.gguf`` file (dequantised by
                transformers' GGUF loader).
            cms_levels: the NEW levels, each {"name", "intermediate_size", "update_period"};
                default: "slow" and "fast" levels of a quarter of the MLP size, periods 16 and 1.
            pretrained_update_period: period of level 0, the pretrained MLP (the slowest).
            warm_start: start new levels' gate/up projections from the pretrained MLP's first
                rows (section 7.3) instead of a random init; their outputs still start at zero.
            test_time_learning: the config's rule for ``InContextLearner(model)``; without
                "periods", level 0 is frozen and the new levels read at their update periods.
        """
        source = load_llama(llama, gguf_file)
        src_config = source.config.to_dict()
        if cms_levels is None:
            cms_levels = [
                {"name": name, "intermediate_size": max(1, int(fraction * source.config.intermediate_size)), "update_period": period}
                for name, fraction, period in DEFAULT_NEW_LEVELS
            ]
        pretrained = {"name": "pretrained", "intermediate_size": source.config.intermediate_size, "update_period": pretrained_update_period}
        # quantization_config: a GGUF source's is dequantised already; kept, it would make every
        # from_pretrained of the retrofit (lm-eval's too) look for the GGUF file.
        for key in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "dtype",
                    "quantization_config"):
            src_config.pop(key, None)
        if test_time_learning is not None and "periods" not in test_time_learning:
            test_time_learning = {**test_time_learning, "periods": [None, *(level["update_period"] for level in cms_levels)]}
        config = LlamaCMSConfig(**src_config, cms_levels=[pretrained, *cms_levels], cms_variant=cms_variant,
                                test_time_learning=test_time_learning)
        model = cls(config).to(source.dtype)
        missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
        new_level_keys = [k for k in missing if ".mlp.levels." in k or ".mlp.norms." in k or ".mlp.level_weights" in k]
        if unexpected or set(missing) != set(new_level_keys):
            raise ValueError(f"state dict mismatch: missing {sorted(set(missing) - set(new_level_keys))}, unexpected {unexpected}")
        if warm_start:
            warm_start_new_levels(model)
        model.generation_config = source.generation_config
        return model.eval()


@torch.no_grad()
def warm_start_new_levels(model: LlamaCMSForCausalLM) -> None:
    """New levels' gate/up projections copy the pretrained MLP's first rows (section 7.3);
    down projections stay zero, so the model's output is unchanged."""
    for layer in model.model.layers:
        mlp = layer.mlp
        for level in mlp.levels:
            rows = level.gate_proj.weight.shape[0]
            level.gate_proj.weight.copy_(mlp.gate_proj.weight[:rows])
            level.up_proj.weight.copy_(mlp.up_proj.weight[:rows])


__all__ = ["LlamaCMSForCausalLM", "LlamaCMSModel", "LlamaCMSMLP"]
