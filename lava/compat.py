"""Differences between transformers 5.x releases that the library has to bridge.

transformers 5.24 renamed the cache keyword of ``model.forward`` from ``past_key_values`` to
``cache`` (the old name is deprecated there and goes away in a later 5.x). Code that calls a model
with a cache goes through :func:`cache_kwargs` so it works on both sides of the rename.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any


@cache
def _cache_keyword_of(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_keyword(model: Any) -> str:
    """``"cache"`` when ``model.forward`` takes ``cache=`` (transformers >= 5.24), else ``"past_key_values"``."""
    return _cache_keyword_of(type(model))


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for ``model(...)``, under the keyword the installed transformers takes."""
    return {cache_keyword(model): cache}
