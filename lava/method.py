"""A compression method = scorer x layer allocator x head allocator, with its window and budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from lava import attention
from lava.allocation import HeadAllocator, LayerAllocator, UniformHeadBudget, UniformLayerBudget
from lava.cache import CompressedCache, layer_windows
from lava.errors import UserError
from lava.scorers import Scorer, SnapKVScorer
from lava.scorers.base import bind_model, needs_model_pass
from lava.scorers.rotary import rotary_of


@dataclass
class CompressionMethod:
    """Everything that defines a KV-cache eviction method.

    Parameters
    ----------
    name : str
        Method name (config file name).
    budget : int
        Average cache entries per KV head per layer, window included (the paper's B0).
    window : int
        Last prompt tokens whose queries score the prefix; always kept.
    scorer : Scorer
        Scores every evictable entry of a layer (and may give a layer statistic).
    layer_allocator : LayerAllocator
        Splits ``layers x (budget - window)`` among layers.
    head_allocator : HeadAllocator
        Splits a layer's budget among its KV heads.
    model_name : str, optional
        For scorers with per-model defaults (CAKE's temperatures).

    Examples
    --------
    >>> method = CompressionMethod("snapkv", budget=128)            # doctest: +SKIP
    >>> cache = method.build_cache(model, max_new_tokens=32)         # doctest: +SKIP
    >>> from lava.compat import cache_kwargs  # `cache=` from transformers 5.24, `past_key_values=` before
    >>> model.generate(input_ids, **cache_kwargs(model, cache), max_new_tokens=32)  # doctest: +SKIP
    """

    name: str = "snapkv"
    budget: int = 128
    window: int = 32
    scorer: Scorer = field(default_factory=SnapKVScorer)
    layer_allocator: LayerAllocator = field(default_factory=UniformLayerBudget)
    head_allocator: HeadAllocator = field(default_factory=UniformHeadBudget)
    model_name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.budget, int) or self.budget <= 0:
            raise UserError(f"budget={self.budget} is invalid; give a positive integer")
        if not isinstance(self.window, int) or self.window < 1:
            raise UserError(f"method.window={self.window} is invalid; give a positive integer")
        if self.budget <= self.window:
            raise UserError(
                f"budget={self.budget} must exceed method.window={self.window} (the window is part of the budget)"
            )
        for part_name in ("scorer", "layer_allocator", "head_allocator"):
            check_field_types(getattr(self, part_name), f"method.{part_name}")
        self.scorer.bind(self.model_name, self.budget)

    def build_cache(self, model: Any, max_new_tokens: int = 64) -> CompressedCache:
        """A fresh cache for one generation; switches ``model`` to the ``"lava"`` attention and binds
        the scorer to ``model`` (:meth:`~lava.scorers.Scorer.bind_model`). For a scorer that needs a
        model pass (KVzip) the cache also watches ``model``'s forward that prefills it
        (:meth:`~lava.cache.CompressedCache.watch_prefill`), to score once that forward is done."""
        attention.enable(model)
        bind_model(self.scorer, rotary_of(model))
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        windows = layer_windows(model.config)  # sliding-window layers (hybrid models) stay uncompressed
        cache = CompressedCache(self, config.num_hidden_layers, reserve=max_new_tokens, windows=windows)
        if needs_model_pass(self.scorer):
            cache.watch_prefill(model)
        return cache

    def describe(self) -> dict[str, Any]:
        """The full parameter set, for the run folder."""

        def part(obj: Any) -> Any:
            if is_dataclass(obj):
                return {"class": type(obj).__qualname__, **asdict(obj)}
            return repr(obj)

        return {
            "name": self.name,
            "budget": self.budget,
            "window": self.window,
            "scorer": part(self.scorer),
            "layer_allocator": part(self.layer_allocator),
            "head_allocator": part(self.head_allocator),
            "model_name": self.model_name,
        }


_SIMPLE_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def check_field_types(part: Any, prefix: str) -> None:
    """One-line UserError when a part's numeric or string hyper-parameter has the wrong type.

    Hydra passes config values through untyped, so ``gamma=oops`` would otherwise fail deep inside
    the first prefill.
    """
    if not is_dataclass(part):
        return
    for f in fields(part):
        annotation = str(f.type).replace(" ", "")
        optional = annotation.endswith("|None")
        allowed = _SIMPLE_TYPES.get(annotation.removesuffix("|None"))
        value = getattr(part, f.name)
        if allowed is None or (optional and value is None):
            continue
        if not isinstance(value, allowed) or (bool not in allowed and isinstance(value, bool)):
            raise UserError(
                f"{prefix}.{f.name}={value!r} is invalid; expected {annotation.replace('|', ' or ')}"
            )
