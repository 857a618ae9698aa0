"""Per-sample fidelity work: the full-cache reference of a continuation, and its comparison with a cache.

For one cache (what the benchmark does, one prefill in all)::

    scores, seconds = measure(model, prompt_ids, continuation_ids, method.build_cache(model, m))

For many caches of one sample (a sweep that prefills once and builds every method's cache)::

    full = prefill_with_full_copy(model, prompt_ids, any_cache)       # or any DynamicCache of the prompt
    reference = reference_from_full_cache(model, full, n, continuation_ids)
    scores = compare(model, reference, cache)                          # per (method, budget), cache prefilled
    pairs = compare_many(model, reference, caches)                     # or all at once, batched

(:func:`full_reference` does the first two from the prompt ids alone.) ``continuation_ids`` holds
``m + 1`` true tokens: the first ``m`` are teacher-forced in one forward (the ``m`` compared
positions), and the token after each of them is the target of the NLL.

The reference runs the full cache (a ``DynamicCache``) through an attention function that records,
per layer, the continuation's post-RoPE queries, keys and values and its full-cache attention
output. :func:`compare` recomputes each layer's attention output for those same queries over what
the compressed cache kept, so the layer's error is its own and not inherited from earlier layers.

In a hybrid model (Gemma 3) a sliding-window layer keeps only its rolling window, under every cache
(:class:`lava.cache.SlidingLayer`, or transformers' own layer in the full cache), and the model's
mask limits its attention to that window anyway. Its recomputed attention applies the same window
(:func:`~eval.metrics.fidelity.windowed_attention`) to the positions the layer holds, so a sliding
layer's error is 0, up to float rounding, whenever its queries and kept entries are the full cache's.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from eval.metrics.fidelity import (
    FullDistribution,
    causal_attention_many,
    relative_l2,
    windowed_attention,
)
from lava.attention import lava_attention_forward, register_attention
from lava.compat import cache_kwargs
from lava.errors import UserError

CAPTURE_ATTENTION = "lava_fidelity_capture"
_capture: dict[int, LayerCapture] | None = None  # set only inside _capturing()
_tee: Any = None  # a DynamicCache, set only inside _teeing()


@dataclass
class LayerCapture:
    """One layer's full-cache attention for the continuation.

    Attributes
    ----------
    query : Tensor, shape (Hq, m, d)
        Post-RoPE queries of the continuation.
    keys, values : Tensor, shape (Hkv, m, d)
        The continuation's own post-RoPE keys and values.
    output : Tensor, shape (m, hidden)
        Full-cache attention output after the output projection (the layer's residual contribution).
    scaling : float
    module : torch.nn.Module
        The attention module (its ``o_proj`` maps per-head outputs to the residual stream).
    window : int or None
        The layer's sliding window (each token attends to the last ``window`` positions, itself
        included), or None for a global layer.
    """

    query: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    output: torch.Tensor
    scaling: float
    module: Any
    window: int | None = None


@dataclass
class FidelityReference:
    """What the full cache does on one sample's continuation.

    Attributes
    ----------
    prompt_len : int
        Prompt tokens ``n``.
    continuation_ids : Tensor, shape (m + 1,)
        True continuation: the first ``m`` are fed, ``continuation_ids[1:]`` are the NLL targets.
    logits : Tensor, shape (m, V), float32
        Full-cache logits at the ``m`` fed positions.
    layers : list of LayerCapture
        One per decoder layer.
    """

    prompt_len: int
    continuation_ids: torch.Tensor
    logits: torch.Tensor
    layers: list[LayerCapture]

    @property
    def m(self) -> int:
        return int(self.continuation_ids.shape[0]) - 1

    @functools.cached_property
    def distribution(self) -> FullDistribution:
        """The full cache's distributions, summarised once for every compared cache."""
        return FullDistribution.of(self.logits)

    @functools.cached_property
    def nll(self) -> torch.Tensor:
        """(m,) NLL of the true next tokens under the full cache."""
        return self.distribution.nll(self.continuation_ids[1:])


def _project(module: Any, per_head: torch.Tensor) -> torch.Tensor:
    """(..., m, Hq, d) per-head attention output -> (..., m, hidden) through the module's output projection."""
    flat = per_head.reshape(*per_head.shape[:-2], -1)
    proj = getattr(module, "o_proj", None)
    return flat if proj is None else proj(flat.to(proj.weight.dtype)).float()


def _capture_attention(module: Any, query, key, value, attention_mask, **kwargs):
    """The model's attention, plus what the fidelity reference needs from this call.

    Calls routed to a :class:`lava.cache.CompressedCache` layer go to the ``"lava"`` attention, all
    others to SDPA. While :func:`_teeing` is active, the call's full keys and values (the prefill's)
    are copied into a plain cache; while :func:`_capturing` is active, the call's queries, new
    keys/values and output are recorded for the layer.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _tee is not None:  # DynamicCache.update concatenates, i.e. copies: no clone needed
        _tee.update(key, value, module.layer_idx)
    if getattr(key, "_lava_layer", None) is not None:
        out, weights = lava_attention_forward(module, query, key, value, attention_mask, **kwargs)
    else:
        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if _capture is not None:
        m = query.shape[2]
        scaling = kwargs.get("scaling") or module.scaling
        _capture[module.layer_idx] = LayerCapture(
            query=query[0].detach(),
            keys=key[0, :, -m:].detach(),
            values=value[0, :, -m:].detach(),
            output=_project(module, out[0].detach()),
            scaling=float(scaling),
            module=module,
        )
    return out, weights


@contextlib.contextmanager
def _attention(model: Any, name: str) -> Iterator[None]:
    """Run ``model`` with attention implementation ``name``, restoring the previous one afterwards."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous != name:
        model.set_attn_implementation(name)
    try:
        yield
    finally:
        if previous is not None and previous != name:
            model.set_attn_implementation(previous)


@contextlib.contextmanager
def _capturing() -> Iterator[dict[int, LayerCapture]]:
    global _capture
    _capture = {}
    try:
        yield _capture
    finally:
        _capture = None


@contextlib.contextmanager
def _teeing(cache: Any) -> Iterator[Any]:
    global _tee
    _tee = cache
    try:
        yield cache
    finally:
        _tee = None


def _as_ids(ids: Any, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(ids, dtype=torch.long, device=device).reshape(-1)


@torch.inference_mode()
def prefill_with_full_copy(model: Any, prompt_ids: Any, cache: Any) -> Any:
    """Prefill ``cache`` with the prompt and return a full plain cache of it, from the same forward.

    Every method's prefill attention is full, so the keys and values each layer computes are the
    full cache's; they are copied into a ``DynamicCache`` as they pass, which spares the reference
    its own prefill.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    prompt_ids : sequence of int or Tensor, shape (n,)
    cache : transformers.Cache
        An empty cache: a method's :class:`lava.cache.CompressedCache` (compressed during this
        prefill) or a ``DynamicCache``.

    Returns
    -------
    transformers.DynamicCache
        All ``n`` prompt entries of every layer and head.
    """
    from transformers import DynamicCache

    register_attention(CAPTURE_ATTENTION, _capture_attention)
    device = next(model.parameters()).device
    prompt = _as_ids(prompt_ids, device)
    full = DynamicCache(config=model.config)
    with _attention(model, CAPTURE_ATTENTION), _teeing(full):
        model(input_ids=prompt[None], **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    if full.get_seq_length() != prompt.numel():
        raise RuntimeError("the cache's prefill did not pass the full prompt keys to attention")
    return full


@torch.inference_mode()
def reference_from_full_cache(
    model: Any, full_cache: Any, prompt_len: int, continuation_ids: Any
) -> FidelityReference:
    """Teacher-force the continuation through a full cache of the prompt, recording each layer.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    full_cache : transformers.DynamicCache
        The prompt's full cache (``prompt_len`` entries per head); the continuation is appended.
    prompt_len : int
    continuation_ids : sequence of int or Tensor, shape (m + 1,)
        The true continuation; its first ``m`` tokens are fed in one forward.
    """
    register_attention(CAPTURE_ATTENTION, _capture_attention)
    device = next(model.parameters()).device
    continuation = _as_ids(continuation_ids, device)
    if continuation.numel() < 2:
        raise ValueError("continuation_ids needs m + 1 >= 2 tokens")
    windows = attention_windows(model.config)
    with _attention(model, CAPTURE_ATTENTION), _capturing() as layers:
        out = model(input_ids=continuation[None, :-1], **cache_kwargs(model, full_cache), use_cache=True)
    for index, capture in layers.items():
        capture.window = windows[index]
    return FidelityReference(
        prompt_len=int(prompt_len),
        continuation_ids=continuation,
        logits=out.logits[0].float(),
        layers=[layers[i] for i in sorted(layers)],
    )


def full_reference(model: Any, prompt_ids: Any, continuation_ids: Any) -> FidelityReference:
    """Prefill a full cache with ``prompt_ids`` and run :func:`reference_from_full_cache` on it.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM (any attention implementation; the reference runs SDPA).
    prompt_ids : sequence of int or Tensor, shape (n,)
    continuation_ids : sequence of int or Tensor, shape (m + 1,)
    """
    from transformers import DynamicCache

    full = prefill_with_full_copy(model, prompt_ids, DynamicCache(config=model.config))
    return reference_from_full_cache(model, full, len(_as_ids(prompt_ids, "cpu")), continuation_ids)


def attention_windows(config: Any) -> list[int | None]:
    """Per decoder layer: the sliding window its attention mask applies, or None for a global layer.

    The layers are those :func:`lava.cache.layer_windows` names (what the compressed cache keeps as
    rolling windows). A chunked-attention layer also rolls, but its mask is a chunk, not a window,
    which the recomputed attention does not model: refused.
    """
    from lava.cache import layer_windows

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if "chunked_attention" in (getattr(text, "layer_types", None) or []):
        raise UserError(
            "bench=fidelity does not support chunked-attention layers (its per-layer attention error "
            "models full and sliding-window masks only)"
        )
    return layer_windows(config)


def kept_prompt_rows(layer: Any, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(keys (N, d), values (N, d), row_head (N,))`` of the prompt entries a cache layer keeps.

    A :class:`lava.cache.CompressedLayer` stores them head after head (``prompt_keys``, ``head_lens``);
    a plain transformers cache layer (the ``full`` method) keeps all ``prompt_len`` entries of every head.
    """
    if hasattr(layer, "prompt_keys"):
        head_lens = layer.head_lens.to(layer.prompt_keys.device)
        heads = torch.arange(head_lens.numel(), device=head_lens.device)
        return layer.prompt_keys, layer.prompt_values, heads.repeat_interleave(head_lens)
    keys, values = layer.keys[0, :, :prompt_len], layer.values[0, :, :prompt_len]  # (Hkv, n, d)
    hkv, n, d = keys.shape
    heads = torch.arange(hkv, device=keys.device).repeat_interleave(n)
    return keys.reshape(hkv * n, d), values.reshape(hkv * n, d), heads


def kept_prompt_positions(layer: Any, prompt_len: int) -> torch.Tensor:
    """(N,) prompt position of each row :func:`kept_prompt_rows` returns, in the same order.

    A :class:`lava.cache.CompressedLayer` gives its positions head after head; any other layer holds
    the last entries of the prompt in every head (all of them in a plain layer, the rolling window
    in a sliding one: transformers' ``DynamicSlidingWindowLayer`` or :class:`lava.cache.SlidingLayer`).
    """
    if hasattr(layer, "prompt_keys"):
        return torch.cat(layer.positions)
    hkv, kept = layer.keys.shape[1], min(layer.keys.shape[2], prompt_len)
    last = torch.arange(prompt_len - kept, prompt_len, device=layer.keys.device)
    return last.repeat(hkv)


@torch.no_grad()
def layer_attention_errors_many(reference: FidelityReference, caches: Sequence[Any]) -> list[list[float]]:
    """Per cache, per layer: relative L2 error of the attention output over the cache's kept prompt entries.

    The queries and the continuation's own keys/values come from the full-cache run, so each
    layer sees the same inputs as under the full cache and its error is its own. Per global layer,
    all caches go through one :func:`~eval.metrics.fidelity.causal_attention_many` call; a sliding
    layer's attention (:func:`~eval.metrics.fidelity.windowed_attention`, per cache) sees only the
    kept positions within its window, as the model's mask lets the full cache see.
    """
    errors: list[list[float]] = [[] for _ in caches]
    n = reference.prompt_len
    for index, capture in enumerate(reference.layers):
        prompts = [kept_prompt_rows(cache.layers[index], n) for cache in caches]
        if capture.window is None:
            per_head = causal_attention_many(
                capture.query, prompts, capture.keys, capture.values, capture.scaling
            )  # (C, Hq, m, d)
        else:
            per_head = torch.stack(
                [
                    windowed_attention(
                        capture.query,
                        keys,
                        values,
                        heads,
                        kept_prompt_positions(cache.layers[index], n),
                        capture.keys,
                        capture.values,
                        capture.scaling,
                        capture.window,
                        n,
                    )
                    for (keys, values, heads), cache in zip(prompts, caches)
                ]
            )  # (C, Hq, m, d)
        approx = _project(capture.module, per_head.transpose(1, 2))  # (C, m, hidden)
        for k in range(len(caches)):
            errors[k].append(relative_l2(approx[k], capture.output))
    return errors


def layer_attention_errors(reference: FidelityReference, cache: Any) -> list[float]:
    """:func:`layer_attention_errors_many` of one cache."""
    return layer_attention_errors_many(reference, [cache])[0]


def scores_from_logits(
    reference: FidelityReference, logits: torch.Tensor, layer_errors: list[float]
) -> dict[str, Any]:
    """The fidelity measures of one cache from its continuation logits (m, V) and layer errors."""
    kl, nll = reference.distribution.kl_and_nll(logits, reference.continuation_ids[1:])
    return {
        "kl": float(kl.mean()),
        "top1": float(reference.distribution.top1_agreement(logits).mean()),
        "nll_delta": float((nll - reference.nll).mean()),
        "attn_err": sum(layer_errors) / len(layer_errors),
        "attn_err_per_layer": layer_errors,
    }


@torch.inference_mode()
def compare(model: Any, reference: FidelityReference, cache: Any) -> dict[str, Any]:
    """Teacher-force the continuation through ``cache`` (already prefilled) and compare with the reference.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The model that filled ``cache`` (for a compressed cache: switched to ``"lava"`` attention).
    reference : FidelityReference
        :func:`full_reference` of the same prompt and continuation.
    cache : transformers.Cache
        A cache holding the prefilled prompt: a :class:`lava.cache.CompressedCache` or, for the full
        method, a ``DynamicCache``. The continuation is appended to it.

    Returns
    -------
    dict
        ``kl`` (mean KL(full || compressed), nats per position), ``top1`` (fraction of positions
        with the same argmax), ``nll_delta`` (mean NLL of the true next tokens, compressed minus
        full), ``attn_err`` (mean over layers) and ``attn_err_per_layer`` (list, one per layer).
    """
    return compare_many(model, reference, [cache])[0][0]


def _batches(caches: Sequence[Any], max_batch: int) -> list[list[int]]:
    """Indices of ``caches`` grouped for one forward each: compressed caches together, others alone."""
    from lava.cache import CompressedCache

    compressed = [i for i, c in enumerate(caches) if isinstance(c, CompressedCache)]
    alone = [[i] for i, c in enumerate(caches) if not isinstance(c, CompressedCache)]
    return alone + [compressed[k : k + max_batch] for k in range(0, len(compressed), max_batch)]


@torch.inference_mode()
def compare_many(
    model: Any, reference: FidelityReference, caches: Sequence[Any], max_batch: int = 32
) -> list[tuple[dict[str, Any], float]]:
    """:func:`compare` for several prefilled caches of one sample, teacher-forced as one batch.

    Every cache holds the same prompt, so their continuations sit at the same positions: the
    compressed caches run in forwards of up to ``max_batch`` rows (a :class:`lava.batch.BatchedCache`,
    one row per cache, each attending over its own entries), which costs less per cache than one
    forward each; a plain cache (the full method) runs alone. The scores equal :func:`compare`'s.

    Parameters
    ----------
    caches : sequence of transformers.Cache
        Prefilled with the reference's prompt; each gets the continuation appended.
    max_batch : int
        Most caches per forward.

    Returns
    -------
    list of (dict, float)
        Per cache, in order: :func:`compare`'s scores, and this cache's share of the wall time (its
        batch's attention errors and forward divided by the batch size, plus its own metrics).
    """
    from lava.batch import BatchedCache

    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch}; give a positive integer")
    device = next(model.parameters()).device
    out: list[tuple[dict[str, Any], float] | None] = [None] * len(caches)
    for rows in _batches(caches, max_batch):
        members = [caches[i] for i in rows]
        _sync(device)
        t0 = time.perf_counter()
        errors = layer_attention_errors_many(reference, members)  # before the forward appends to the caches
        cache = members[0] if len(rows) == 1 else BatchedCache(members)
        fed = reference.continuation_ids[None, :-1].expand(len(rows), -1)
        logits = model(input_ids=fed, **cache_kwargs(model, cache), use_cache=True).logits.float()
        _sync(device)
        share = (time.perf_counter() - t0) / len(rows)
        for k, i in enumerate(rows):
            t1 = time.perf_counter()
            scores = scores_from_logits(reference, logits[k], errors[k])
            out[i] = (scores, share + time.perf_counter() - t1)
    return out  # type: ignore[return-value]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: Any, prompt_ids: Any, continuation_ids: Any, cache: Any
) -> tuple[dict[str, Any], dict[str, float]]:
    """One sample under one cache: a single prefill serves both the cache and the full reference.

    Returns
    -------
    scores : dict
        :func:`compare`'s output.
    seconds : dict
        ``prefill_seconds`` (prefill and compression), ``reference_seconds`` (the full cache's
        teacher-forced pass), ``decode_seconds`` (the cache's teacher-forced pass and the metrics).
    """
    device = next(model.parameters()).device
    _sync(device)
    t0 = time.perf_counter()
    full = prefill_with_full_copy(model, prompt_ids, cache)
    _sync(device)
    t1 = time.perf_counter()
    reference = reference_from_full_cache(model, full, full.get_seq_length(), continuation_ids)
    del full
    _sync(device)
    t2 = time.perf_counter()
    scores = compare(model, reference, cache)
    _sync(device)
    t3 = time.perf_counter()
    return scores, {"prefill_seconds": t1 - t0, "reference_seconds": t2 - t1, "decode_seconds": t3 - t2}
