"""lava: KV-cache compression for transformers models, as scorer x layer allocator x head allocator.

The public API, importable from ``lava`` directly::

    from lava import CompressionMethod, SnapKVScorer, EntropyLayerBudget, enable, cache_kwargs

Names resolve on first use, so ``import lava.compat`` (the transformers version check) stays light
and runs before the cache classes, which need a supported transformers, are imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # a method and its cache
    "CompressionMethod": "lava.method",
    "CompressedCache": "lava.cache",
    "enable": "lava.attention",
    "cache_kwargs": "lava.compat",
    "UserError": "lava.errors",
    # scorers
    "Scorer": "lava.scorers",
    "LayerScores": "lava.scorers",
    "SnapKVScorer": "lava.scorers",
    "LavaScorer": "lava.scorers",
    "CakeScorer": "lava.scorers",
    "SinkRecencyScorer": "lava.scorers",
    # allocators
    "LayerAllocator": "lava.allocation",
    "UniformLayerBudget": "lava.allocation",
    "PyramidLayerBudget": "lava.allocation",
    "ProportionalLayerBudget": "lava.allocation",
    "EntropyLayerBudget": "lava.allocation",
    "PreferenceLayerBudget": "lava.allocation",
    "HeadAllocator": "lava.allocation",
    "UniformHeadBudget": "lava.allocation",
    "FlatHeadBudget": "lava.allocation",
    # models
    "ModelSpec": "lava.models",
    "load_model": "lava.models",
    "load_tokenizer": "lava.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lava' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
