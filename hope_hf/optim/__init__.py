from .cms_levels import CMSLevel, find_cms_levels
from .cms_schedule import CMSSchedule
from .in_context import InContextLearner, ReadingState

__all__ = ["CMSLevel", "CMSSchedule", "InContextLearner", "ReadingState", "find_cms_levels"]
