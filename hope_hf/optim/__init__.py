from .cms_levels import CMSLevel, find_cms_levels
from .cms_schedule import CMSSchedule
from .m3 import M3, newton_schulz

__all__ = ["M3", "newton_schulz", "CMSLevel", "CMSSchedule", "find_cms_levels"]
