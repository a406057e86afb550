from .cms_levels import CMSLevel, find_cms_levels
from .cms_schedule import CMSSchedule
from .in_context import InContextLearner, ReadingState
from .m3 import M3, newton_schulz

__all__ = ["M3", "newton_schulz", "CMSLevel", "CMSSchedule", "InContextLearner", "ReadingState", "find_cms_levels"]
