"""Memory kernels. ops never imports modeling."""

from .self_referential import (
    chunk_self_referential_gated_delta_rule,
    fla_self_referential_gated_delta_rule,
    naive_self_referential_gated_delta_rule,
    self_referential_gated_delta_rule,
    state_width,
    use_compiled_chunks,
)

__all__ = [
    "chunk_self_referential_gated_delta_rule",
    "fla_self_referential_gated_delta_rule",
    "naive_self_referential_gated_delta_rule",
    "self_referential_gated_delta_rule",
    "state_width",
    "use_compiled_chunks",
]
