"""hope-hf: the Hope architecture (Nested Learning, Behrouz et al., NeurIPS 2025) for transformers.

``import hope_hf`` registers model_types "hope" and "llama_cms" with AutoConfig, AutoModel and
AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration import HopeConfig, LlamaCMSConfig
from .modeling import HopeForCausalLM, HopeModel, LlamaCMSForCausalLM, LlamaCMSModel
from .optim import M3, CMSSchedule
from .test_time import InContextLearner

for _config, _model, _lm in [(HopeConfig, HopeModel, HopeForCausalLM), (LlamaCMSConfig, LlamaCMSModel, LlamaCMSForCausalLM)]:
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForCausalLM.register(_config, _lm, exist_ok=True)

__version__ = "0.1.0"
__all__ = [
    "CMSSchedule",
    "HopeConfig",
    "HopeForCausalLM",
    "HopeModel",
    "InContextLearner",
    "LlamaCMSConfig",
    "LlamaCMSForCausalLM",
    "LlamaCMSModel",
    "M3",
]
