from .configuration_hope import HopeConfig

__all__ = ["HopeConfig"]
