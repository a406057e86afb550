"""Self-referential memory with a two-layer MLP main memory (``titans_memory_depth=2``)."""

from .chunk import chunk_deep_self_referential_rule
from .common import deep_state_width
from .naive import naive_deep_self_referential_rule

__all__ = ["chunk_deep_self_referential_rule", "deep_state_width", "naive_deep_self_referential_rule"]
