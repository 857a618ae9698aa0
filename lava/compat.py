"""Differences between transformers 5.x releases that the library has to bridge.

transformers 5.24 renamed the cache keyword of ``model.forward`` from ``past_key_values`` to
``cache`` (the old name is deprecated there and goes away in a later 5.x). Code that calls a model
with a cache goes through :func:`cache_kwargs` so it works on both sides of the rename.

The supported range is :data:`MIN_TRANSFORMERS` <= version < :data:`MAX_TRANSFORMERS` (tested at
both ends: ``make test`` on the newest, ``make test-lowest`` on the oldest); :func:`require_transformers`
turns any other installed version into a one-line error before the cache classes are defined.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from functools import cache
from typing import Any

from lava.errors import UserError

MIN_TRANSFORMERS = "5.0.0"  # keep equal to the floor in pyproject.toml
MAX_TRANSFORMERS = "6"  # exclusive


def _release(version: str) -> tuple[int, ...]:
    """``"5.2.0"`` -> (5, 2, 0); pre-release and local suffixes are ignored (5.3.0.dev0 counts as 5.3.0)."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def require_transformers(installed: str | None = None) -> None:
    """One-line UserError unless the installed transformers lies in the supported range."""
    installed = installed or importlib.metadata.version("transformers")
    if _release(MIN_TRANSFORMERS) <= _release(installed) < _release(MAX_TRANSFORMERS):
        return
    raise UserError(
        f"transformers {installed} is installed; lava-bench needs transformers>={MIN_TRANSFORMERS},"
        f"<{MAX_TRANSFORMERS} (pip install 'transformers>={MIN_TRANSFORMERS},<{MAX_TRANSFORMERS}')"
    )


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
