from .configuration_hope import HopeConfig
from .configuration_llama_cms import LlamaCMSConfig

__all__ = ["HopeConfig", "LlamaCMSConfig"]
