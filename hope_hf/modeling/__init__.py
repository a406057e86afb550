from .modeling_hope import ContinuumMemorySystem, HopeCache, HopeForCausalLM, HopeModel, HopePreTrainedModel, HopeTitansMixer
