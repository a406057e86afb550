"""Memory kernels. ops never imports modeling."""

from .deep_memory import chunk_deep_self_referential_rule, deep_state_width, naive_deep_self_referential_rule
from .self_referential import (
    chunk_self_referential_gated_delta_rule,
    fla_self_referential_gated_delta_rule,
    naive_self_referential_gated_delta_rule,
    self_referential_gated_delta_rule,
    state_width,
    use_compiled_chunks,
)

__all__ = [
    "chunk_deep_self_referential_rule",
    "deep_state_width",
    "naive_deep_self_referential_rule",
    "chunk_self_referential_gated_delta_rule",
    "fla_self_referential_gated_delta_rule",
    "naive_self_referential_gated_delta_rule",
    "self_referential_gated_delta_rule",
    "state_width",
    "use_compiled_chunks",
]
