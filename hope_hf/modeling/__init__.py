from .modeling_hope import ContinuumMemorySystem, HopeCache, HopeForCausalLM, HopeModel, HopePreTrainedModel, HopeTitansMixer
from .modeling_llama_cms import LlamaCMSForCausalLM, LlamaCMSMLP, LlamaCMSModel

__all__ = [
    "ContinuumMemorySystem",
    "HopeCache",
    "HopeForCausalLM",
    "HopeModel",
    "HopePreTrainedModel",
    "HopeTitansMixer",
    "LlamaCMSForCausalLM",
    "LlamaCMSMLP",
    "LlamaCMSModel",
]
