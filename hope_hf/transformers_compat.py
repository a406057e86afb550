"""The one name that differs across the supported transformers releases (5.23 to the newest 5.x).

transformers 5.24 renamed the cache argument of model forwards, of the mask builders and of
``generate()``, and the cache field of model outputs, from ``past_key_values`` to ``cache``
(the old name is deprecated until 5.40). hope_hf's own forwards take ``cache`` on every release
and still accept ``past_key_values``; where hope_hf calls transformers, or reads a transformers
output, it uses ``CACHE_ARG``, the name that the installed release expects, so no deprecation
warning is raised on any release.
"""

import functools

from transformers.modeling_outputs import BaseModelOutputWithPast

CACHE_ARG = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def accepts_past_key_values(forward):
    """Let ``forward(..., cache=...)`` also be called with ``past_key_values=`` (what transformers
    5.23's ``generate()`` passes, and what users of transformers' older API write)."""
    if CACHE_ARG == "cache":
        from transformers.utils.deprecation import deprecate_kwarg

        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)

    @functools.wraps(forward)
    def renamed(*args, **kwargs):
        if "past_key_values" in kwargs:
            if kwargs.get("cache") is not None:
                raise ValueError("Pass the cache as `cache` or as `past_key_values`, not both")
            kwargs["cache"] = kwargs.pop("past_key_values")
        return forward(*args, **kwargs)

    return renamed


def output_cache(outputs):
    """The cache held by a transformers model output, on any supported release."""
    return getattr(outputs, CACHE_ARG)


__all__ = ["CACHE_ARG", "accepts_past_key_values", "output_cache"]
