"""hope-hf: the Hope architecture (Nested Learning, Behrouz et al., NeurIPS 2025) for transformers.

``import hope_hf`` registers model_type "hope" with AutoConfig, AutoModel and AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration import HopeConfig
from .modeling import HopeForCausalLM, HopeModel
from .optim import CMSSchedule, InContextLearner

AutoConfig.register("hope", HopeConfig, exist_ok=True)
AutoModel.register(HopeConfig, HopeModel, exist_ok=True)
AutoModelForCausalLM.register(HopeConfig, HopeForCausalLM, exist_ok=True)

__version__ = "0.1.0"
__all__ = ["HopeConfig", "HopeModel", "HopeForCausalLM", "CMSSchedule", "InContextLearner"]
