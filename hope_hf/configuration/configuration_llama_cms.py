"""LlamaCMSConfig: the installed LlamaConfig plus the levels of a Continuum Memory System."""

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

from .configuration_hope import (CMS_VARIANTS, validate_choice, validate_cms_levels, validate_test_time_learning,
                                 warn_misspelt_fields)


@strict
class LlamaCMSConfig(LlamaConfig):
    r"""
    A Llama whose MLPs are Continuum Memory Systems (Nested Learning, section 7.3). Every
    LlamaConfig field keeps its meaning.

    Args:
        cms_levels (`list[dict]`, *optional*):
            All levels, each {"name": str, "intermediate_size": int, "update_period": int}.
            Level 0 is the pretrained Llama MLP (its `intermediate_size` must equal the config's);
            the others are new SwiGLU MLPs. Defaults to the pretrained level alone.
        cms_variant (`str`):
            "sequential" (Eq 73), "independent" (Eq 74) or "nested" (Eq 72), as in HopeConfig.
        test_time_learning (`dict`, *optional*):
            The rule `InContextLearner(model)` reads with, as in HopeConfig. `from_llama` sets one
            measured on the pretrained SmolLM2 (docs/evaluation.md).
    """

    model_type = "llama_cms"

    cms_levels: list[dict] | None = None
    cms_variant: str = "sequential"
    test_time_learning: dict | None = None

    def __post_init__(self, **kwargs):
        if self.cms_levels is None:
            self.cms_levels = [{"name": "pretrained", "intermediate_size": self.intermediate_size, "update_period": 1}]
        validate_cms_levels(self.cms_levels)
        if self.cms_levels[0]["intermediate_size"] != self.intermediate_size:
            raise ValueError(
                f"`cms_levels[0]['intermediate_size']` is the pretrained MLP and must equal `intermediate_size` "
                f"({self.intermediate_size}), got {self.cms_levels[0]['intermediate_size']}"
            )
        validate_choice("cms_variant", self.cms_variant, CMS_VARIANTS)
        validate_test_time_learning(self.test_time_learning, len(self.cms_levels))
        warn_misspelt_fields(type(self), kwargs)
        super().__post_init__(**kwargs)


__all__ = ["LlamaCMSConfig"]
