"""One prefill, many caches: keep what every method needs from a full-attention prefill, build each cache.

Every method here prefills with full attention and differs only in what it keeps, so a sweep over
methods and budgets runs the prompt once through :class:`PrefillCapture` (full attention, exactly
the computation of a single run's prefill), scores each layer once per distinct scorer
(:func:`score_methods`), and builds each configuration's :class:`~lava.cache.CompressedCache` from
the captured keys and values with :func:`build_cache_from_capture` (its own layer and head allocation,
replaying the single run's online allocation, then packing). :meth:`PrefillCapture.to_dynamic`
gives the full cache of the same prefill.

Memory: the capture holds the whole prompt's keys and values of every layer (the same as a full
``DynamicCache``) plus, per layer, the last queries its methods read (the largest window; every
prompt query when a scorer reads them all, as H2O and expected attention do: ``Hq / (2 Hkv)`` times
the keys and values), until the caches are built.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers.cache_utils import Cache

from lava import attention
from lava.cache import CompressedCache, SlidingLayer, UnboundedLayer, layer_windows
from lava.method import CompressionMethod
from lava.policy import ScoredLayer, evicts, queries_read, score_by_model_pass, score_layer, scorer_key
from lava.scorers.base import bind_model, needs_model_pass
from lava.scorers.rotary import Rotary, rotary_of


class CaptureLayer(UnboundedLayer):
    """One layer of a :class:`PrefillCapture`: the prompt's keys, values and last queries."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, queries: int | None) -> None:
        super().__init__()
        self.queries = queries  # last prompt queries kept; None keeps them all
        self.seq_len = 0
        self.full_keys: torch.Tensor | None = None  # (Hkv, n, d)
        self.full_values: torch.Tensor | None = None
        self.query_window: torch.Tensor | None = None  # (Hq, min(queries, n), d)
        self.scaling = 1.0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if key_states.shape[0] != 1 or self.is_initialized:
            raise ValueError("PrefillCapture takes one prompt of batch size 1, in one forward")
        self.lazy_initialization(key_states, value_states)
        self.full_keys, self.full_values = key_states[0], value_states[0]
        self.seq_len = key_states.shape[2]
        key_states._lava_layer = self
        return key_states, value_states

    def attend(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """Full causal attention (as a single run's prefill); keeps the last ``queries`` queries."""
        self.query_window = (query[0] if self.queries is None else query[0, :, -self.queries :]).clone()
        self.scaling = scaling
        return attention.full_prefill_attention(query, self.full_keys[None], self.full_values[None], scaling)

    def reset(self) -> None:
        self.__init__(self.queries)


class PrefillCapture(Cache):
    """A prefill-only cache that keeps, per layer, the prompt's keys, values and last ``queries`` queries.

    Parameters
    ----------
    num_layers : int
    queries : int or None
        Last prompt queries kept per layer: the most the methods to build read
        (:func:`capture_queries`); None keeps every prompt query.

    Attributes
    ----------
    rotary : Rotary or None
        The model's rotary embedding, bound to the scorers before scoring (set by :func:`capture_prefill`).
    model : transformers model or None
        The model that prefilled, and ``input_ids`` (1, n) its prompt (set by :func:`capture_prefill`):
        a scorer that needs a model pass (KVzip) runs the model again on top of the captured layers.
    """

    def __init__(self, num_layers: int, queries: int | None, windows: list[int | None] | None = None) -> None:
        super().__init__(layers=[])
        # A hybrid model's sliding layers attend through their own rolling window (transformers'
        # sliding mask) and keep only it: the caches built from the capture share that window.
        self.windows = [None] * num_layers if windows is None else list(windows)
        self.layers.extend(
            CaptureLayer(queries) if window is None else SlidingLayer(window) for window in self.windows
        )
        self.rotary: Rotary | None = None
        self.model: Any = None
        self.input_ids: torch.Tensor | None = None

    @property
    def prompt_len(self) -> int:
        return self.layers[0].get_seq_length()

    @property
    def global_layers(self) -> list[CaptureLayer]:
        """The captured global layers, in order (the ones scored and compressed)."""
        return [layer for layer in self.layers if isinstance(layer, CaptureLayer)]

    @property
    def device(self) -> torch.device:
        return self.layers[0].device

    def to_dynamic(self, model: Any) -> Any:
        """The full cache of this prefill: a ``DynamicCache`` over every layer's captured keys and values.

        The captured tensors themselves, not a copy (``DynamicCache.update`` concatenates, which
        would hold the prompt's keys and values twice until :meth:`release`); the first decode step
        concatenates them into new tensors as usual. A sliding-window layer, which keeps only its
        window, is filled through ``update``, then given the prompt's length (its positions).
        """
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=model.config)
        for i, layer in enumerate(self.layers):
            if isinstance(layer, SlidingLayer):
                cache.update(layer.keys, layer.values, i)
                cache.layers[i].cumulative_length = layer.get_seq_length()
                continue
            keys, values = layer.full_keys[None], layer.full_values[None]  # (1, Hkv, n, d)
            target = cache.layers[i] if i < len(cache.layers) else None
            if type(target) is not DynamicLayer:
                cache.update(keys, values, i)
                continue
            target.update(keys[:, :, :0], values[:, :, :0])  # initialises the layer (version-independent)
            target.keys, target.values = keys, values
        return cache

    def pass_layers(self) -> list[tuple[torch.Tensor, torch.Tensor, int | None]]:
        """What a scorer's model pass reads (:meth:`lava.scorers.Scorer.model_pass`): per layer the
        captured keys and values (Hkv, n, d) of a global layer, a sliding layer's kept ones and window."""
        return [
            (layer.keys[0], layer.values[0], layer.sliding_window)
            if isinstance(layer, SlidingLayer)
            else (layer.full_keys, layer.full_values, None)
            for layer in self.layers
        ]

    def release(self) -> None:
        """Drop the captured tensors (the caches built from them hold their own copies)."""
        self.model = self.input_ids = None
        for layer in self.layers:
            if isinstance(layer, SlidingLayer):
                layer.keys = layer.values = None
            else:
                layer.full_keys = layer.full_values = layer.query_window = None


def capture_queries(methods: list[CompressionMethod]) -> int | None:
    """The last prompt queries a capture must keep for ``methods``: the most any scorer reads, None
    (every query) when one reads them all, 1 when there is no method."""
    counts = [queries_read(method) for method in methods]
    if any(count is None for count in counts):
        return None
    return max(counts, default=1)


def capture_prefill(
    model: Any, input_ids: torch.Tensor, queries: int | None
) -> tuple[PrefillCapture, torch.Tensor]:
    """Prefill ``input_ids`` (1, n) once with full attention, keeping the last ``queries`` queries
    of every layer (all of them when None; :func:`capture_queries` gives the number for a method list).

    Returns
    -------
    capture : PrefillCapture
    logits : Tensor, shape (V,)
        Next-token logits after the prompt (the first generated token of every configuration).
    """
    from lava.compat import cache_kwargs

    attention.enable(model)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    capture = PrefillCapture(config.num_hidden_layers, queries, layer_windows(model.config))
    capture.rotary = rotary_of(model)
    capture.model, capture.input_ids = model, input_ids
    with torch.inference_mode():
        out = model(input_ids=input_ids, **cache_kwargs(model, capture), use_cache=True, logits_to_keep=1)
    return capture, out.logits[0, -1]


def score_methods(
    capture: PrefillCapture, methods: list[CompressionMethod]
) -> tuple[dict[str, list[ScoredLayer]], dict[str, float]]:
    """Each distinct scorer (:func:`lava.policy.scorer_key`) run once per global layer.

    Returns the scored layers and the seconds spent, both by scorer key; methods whose prompt fits
    their budget need no scores and are skipped. Each scorer is first bound to the captured model's
    rotary embedding (:meth:`~lava.scorers.Scorer.bind_model`). A scorer that needs a model pass
    (KVzip) runs it here over the captured layers, and its seconds count those forward passes.
    """
    scored: dict[str, list[ScoredLayer]] = {}
    seconds: dict[str, float] = {}
    n = capture.prompt_len
    with torch.inference_mode():
        for method in methods:
            key = scorer_key(method)
            if key in scored or not evicts(method, n):
                continue
            bind_model(method.scorer, capture.rotary)
            t0 = time.perf_counter()
            if needs_model_pass(method.scorer):
                scored[key] = score_by_model_pass(
                    method, capture.model, capture.input_ids, capture.pass_layers()
                )
            else:
                scored[key] = [
                    score_layer(method, layer.query_window, layer.full_keys, layer.full_values, layer.scaling)
                    for layer in capture.global_layers
                ]
            synchronize(capture.device)
            seconds[key] = time.perf_counter() - t0
    return scored, seconds


def build_cache_from_capture(
    method: CompressionMethod,
    capture: PrefillCapture,
    scored: list[ScoredLayer] | None,
    reserve: int,
) -> CompressedCache:
    """The cache a single run of ``method`` would hold after its prefill, built from the shared one.

    Parameters
    ----------
    scored : list of ScoredLayer or None
        ``method``'s scorer on every global layer (None when the prompt fits the budget).
    reserve : int
        Decode entries preallocated per head (``max_new_tokens``).
    """
    t0 = time.perf_counter()
    cache = CompressedCache(method, len(capture.layers), reserve=reserve, windows=capture.windows)
    sliding = [isinstance(layer, SlidingLayer) for layer in capture.layers]
    with torch.inference_mode():
        cache.store_prefill(
            [layer.keys[0] if s else layer.full_keys for layer, s in zip(capture.layers, sliding)],
            [layer.values[0] if s else layer.full_values for layer, s in zip(capture.layers, sliding)],
            scored,
            prompt_len=capture.prompt_len,
        )
    synchronize(capture.device)
    cache.timings["allocation"] = time.perf_counter() - t0
    return cache


def synchronize(where: torch.Tensor | torch.device) -> None:
    """Wait for a tensor's device (or a device), so that a phase's wall time is its work, not its
    launches (once per phase and sample, never per decode step)."""
    device = where.device if isinstance(where, torch.Tensor) else torch.device(where)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
