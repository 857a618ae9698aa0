"""Prefill, compression and decode time, KV bytes and peak device memory of the speed grid's configurations.

A configuration (``full``, ``full@budget``, or a method at a budget) is prefilled once
(:func:`prefill`; a compressing cache compresses each layer right after its attention) into a cache
that then stays alive while its decode is timed several times (:func:`decode`): each time from the
same first token, the next token chosen on the device (no host round trip per step, as a serving
loop would), and the decode steps dropped again afterwards (:func:`rewind`). Repeats therefore cost
no new prefill, and every repeat decodes the same tokens over the same kept entries. ``full@budget``
is the full cache on the prompt's first ``budget`` tokens: a cache that only ever held ``budget``
entries per head, with nothing to score, evict or mask, i.e. the fastest decode and smallest memory
a budget allows. :class:`Measured` gathers one configuration's measurements into its row (medians
with their spread); :func:`add_ratios` sets the ratios between rows and the memory target.

Memory (CUDA only, ``torch.cuda.max_memory_allocated``): the other configurations' caches are alive
while one is measured, so each peak is taken as bytes above what everything else held at that moment,
and reported with the weights added: ``peak - weights`` means what it would if the configuration ran
alone.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from eval.gpu_check.methods import build_named_method
from eval.perf.memory import kv_size
from lava import attention
from lava.compat import cache_kwargs

FULL = "full"
CEILING = "full@budget"
# The memory target's margin: (peak - weights - activations) <= (1 + this) x the allowance's bytes.
ALLOWANCE_SLACK = 0.10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> float:
    """Free what can be freed, restart the peak counter; returns the bytes still allocated (NaN off CUDA)."""
    gc.collect()
    if device.type != "cuda":
        return float("nan")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak(device: torch.device) -> float:
    """Peak allocated bytes since the last reset (``torch.cuda.max_memory_allocated``); NaN off CUDA."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else float("nan")


def _settle(device: torch.device) -> float:
    """Collect garbage, wait for the device, restart the peak counter; returns the bytes allocated now.

    Unlike :func:`_reset_memory` the allocator keeps its cached blocks: a timed decode must not pay for
    fresh device allocations that a running server would not make. NaN off CUDA."""
    gc.collect()
    _sync(device)
    if device.type != "cuda":
        return float("nan")
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def release(device: torch.device) -> None:
    """Hand the allocator's cached blocks back once a group of configurations is done."""
    _reset_memory(device)


def budget_kv_bytes(config: Any, budget: int, dtype: torch.dtype) -> int:
    """Bytes of ``budget`` key and value entries per KV head per layer: what a budget may store."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * config.num_key_value_heads * budget * 2 * head_dim * itemsize


def layer_prompt_kv_bytes(config: Any, prompt_tokens: int, dtype: torch.dtype) -> int:
    """Bytes of one layer's keys and values over the whole prompt: what a layer-wise compressor holds
    between that layer's attention and its compression."""
    return budget_kv_bytes(config, prompt_tokens, dtype) // config.num_hidden_layers


def memory_allowance(config: Any, budget: int, prompt_tokens: int, dtype: torch.dtype) -> float:
    """Bytes a compressing configuration may hold above the weights and the uncached prefill's own
    activations: (the budget's KV bytes + one layer's full prompt KV) x (1 + :data:`ALLOWANCE_SLACK`)."""
    held = budget_kv_bytes(config, budget, dtype) + layer_prompt_kv_bytes(config, prompt_tokens, dtype)
    return (1 + ALLOWANCE_SLACK) * held


def _timed(fn: Callable, acc: list[float], device: torch.device) -> Callable:
    """``fn`` with its device-synchronised wall time added to ``acc[0]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _sync(device)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _sync(device)
            acc[0] += time.perf_counter() - t0

    return wrapper


@torch.inference_mode()
def activation_bytes(model: Any, ids: torch.Tensor) -> float:
    """Peak bytes above what is allocated before an uncached prefill: the prefill's own activations."""
    device = ids.device
    model.set_attn_implementation("sdpa")
    base = _reset_memory(device)
    model(input_ids=ids, use_cache=False, logits_to_keep=1)
    _sync(device)
    return _peak(device) - base


def use_attention(model: Any, name: str) -> None:
    """Switch ``model`` to the attention ``name``'s cache needs (configurations alternate between rounds)."""
    if name in (FULL, CEILING):
        if getattr(model.config, "_attn_implementation", None) != "sdpa":
            model.set_attn_implementation("sdpa")
    else:
        attention.enable(model)


@dataclass
class Prefilled:
    """One configuration's prefilled cache, kept alive between its decode repeats.

    Attributes
    ----------
    first_token : torch.Tensor
        (1, 1) the token the prefill chose; every decode repeat starts from it.
    held_bytes : float
        Device bytes this configuration holds (its cache), so that a decode's peak can be taken above
        everything else; NaN off CUDA.
    """

    name: str
    budget: int | None
    cache: Any
    first_token: torch.Tensor
    prompt_len: int
    held_bytes: float


@torch.inference_mode()
def prefill(
    model: Any, model_name: str, ids: torch.Tensor, name: str, budget: int | None, decode_steps: int
) -> tuple[Prefilled, dict]:
    """Prefill ``ids`` (1, n) into a fresh cache of ``name`` at ``budget``; returns the cache and the
    measurements: ``prefill_s``, ``compress_s``, ``peak_above_base`` (bytes above what was allocated
    just before), ``base_bytes``, ``kv_bytes``, ``kept_entries``, ``finite``."""
    from transformers import DynamicCache

    device = ids.device
    if name == CEILING:
        ids = ids[:, :budget]
    base = _settle(device)
    compress = [0.0]
    if name in (FULL, CEILING):
        cache = DynamicCache(config=model.config)
    else:
        cache = build_named_method(name, budget, model_name).build_cache(
            model, max_new_tokens=decode_steps + 1
        )
        if hasattr(cache, "compress_layer"):  # per-layer compression, timed from outside the library
            cache.compress_layer = _timed(cache.compress_layer, compress, device)
        else:
            compress[0] = float("nan")
    use_attention(model, name)
    kwargs = cache_kwargs(model, cache)
    _sync(device)
    t0 = time.perf_counter()
    logits = model(input_ids=ids, **kwargs, use_cache=True, logits_to_keep=1).logits
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = _peak(device)
    token = logits[:, -1].argmax(-1, keepdim=True)
    finite = bool(torch.isfinite(logits).all())
    del logits
    cache.__dict__.pop("compress_layer", None)  # the class's own method again
    length = ids.shape[1]
    size = kv_size(cache, length)
    held = _settle(device) - base
    state = Prefilled(name, budget, cache, token, length, held)
    return state, {
        "prefill_s": seconds,
        "compress_s": compress[0],
        "peak_above_base": peak - base,
        "base_bytes": base,
        "kv_bytes": size["cache_bytes"],
        "kept_entries": size["kept_entries"],
        "prompt_tokens": length,
        "finite": finite,
    }


def rewind(cache: Any, prompt_len: int) -> None:
    """Drop the decode steps from ``cache``: back to the ``prompt_len`` tokens its prefill stored.

    ``crop`` gets the number of tokens to drop, negated: recent transformers refuse a positive length
    for a ``DynamicCache`` and read a negative one as a count, as earlier ones and
    :class:`lava.cache.CompressedCache` do."""
    drop = cache.get_seq_length() - prompt_len
    if drop > 0:
        cache.crop(-drop)
    if cache.get_seq_length() != prompt_len:
        raise RuntimeError(f"rewind left {cache.get_seq_length()} tokens, expected {prompt_len}")


@torch.inference_mode()
def decode(model: Any, state: Prefilled, steps: int) -> dict:
    """Time ``steps`` greedy decode steps from ``state.first_token``, then rewind the cache.

    Returns ``decode_s``, ``tok_s``, ``peak_above_others`` (the decode's peak above what everything
    but this configuration held), ``tokens`` (the decoded ids) and ``finite``."""
    device = state.first_token.device
    use_attention(model, state.name)
    kwargs = cache_kwargs(model, state.cache)
    before = _settle(device)
    token, tokens = state.first_token, []
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = model(input_ids=token, **kwargs, use_cache=True).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = _peak(device)
    finite = bool(torch.isfinite(logits).all())
    generated = torch.cat(tokens, dim=1)[0].tolist()
    del logits, token, tokens
    rewind(state.cache, state.prompt_len)
    others = before - state.held_bytes
    state.held_bytes = _settle(device) - others
    return {
        "decode_s": seconds,
        "tok_s": steps / seconds,
        "peak_above_others": peak - others,
        "tokens": generated,
        "finite": finite,
    }


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of ``values``; NaNs if there are none."""
    if not values:
        return (float("nan"),) * 3
    return statistics.median(values), min(values), max(values)


def _max(values: list[float]) -> float:
    """Largest value, NaN if any is NaN (memory off CUDA) or there are none."""
    return float("nan") if not values or any(math.isnan(v) for v in values) else max(values)


@dataclass
class Measured:
    """Every measurement of one configuration, in the order taken; :meth:`row` summarises them."""

    method: str
    budget: int | None
    decode_steps: int
    prefills: list[dict] = field(default_factory=list)
    warmup: dict | None = None  # the untimed first decode at full size
    decodes: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def row(self, weights: float) -> dict:
        """One row of perf.csv: medians with min and max and the count of each timing, memory peaks
        as weights + the largest peak above everything else, and any error."""
        out: dict[str, Any] = {"method": self.method, "budget": self.budget or ""}
        if self.prefills:
            first = self.prefills[0]
            prefill_s = spread([p["prefill_s"] for p in self.prefills])
            rates = [d["tok_s"] for d in self.decodes]
            decode = spread(rates)
            decoded = self.decodes + ([self.warmup] if self.warmup else [])
            peak_prefill = weights + _max([p["peak_above_base"] for p in self.prefills])
            peak_decode = weights + _max([d["peak_above_others"] for d in decoded])
            out.update(
                prompt_tokens=first["prompt_tokens"],
                decode_steps=self.decode_steps,
                prefill_s=prefill_s[0],
                prefill_s_min=prefill_s[1],
                prefill_s_max=prefill_s[2],
                prefill_runs=len(self.prefills),
                compress_s=statistics.median([p["compress_s"] for p in self.prefills]),
                decode_tok_s=decode[0],
                decode_tok_s_min=decode[1],
                decode_tok_s_max=decode[2],
                decode_runs=len(rates),
                decode_tok_s_runs=" ".join(f"{r:.6g}" for r in rates),
                warmup_tok_s=self.warmup["tok_s"] if self.warmup else float("nan"),
                same_tokens=bool(self.warmup and self.decodes) and all(d["tokens"] == self.warmup["tokens"] for d in self.decodes),
                kv_bytes=first["kv_bytes"],
                kept_entries=first["kept_entries"],
                base_bytes=first["base_bytes"],
                peak_prefill_bytes=peak_prefill,
                peak_decode_bytes=peak_decode,
                peak_bytes=_max([peak_prefill, peak_decode]),
                finite=all(m["finite"] for m in self.prefills + decoded),
            )  # fmt: skip
        if self.errors:
            out["error"] = "; ".join(self.errors)
        return out


def add_ratios(rows: list[dict], weights: float, activations: float, config: Any, dtype: torch.dtype) -> None:
    """Ratios against ``full`` and the same budget's ``full@budget`` (medians of each); memory against
    the budget's KV bytes and, for the compressing methods, the memory target.

    Rows without a prefill (an error before any measurement) are left as they are."""
    measured = [r for r in rows if "prefill_s" in r]
    full = next((r for r in measured if r["method"] == FULL), None)
    ceilings = {r["budget"]: r for r in measured if r["method"] == CEILING}
    nan = float("nan")
    for r in measured:
        above = r["peak_bytes"] - weights
        r["peak_above_weights_bytes"] = above
        r["decode_above_weights_bytes"] = r["peak_decode_bytes"] - weights
        if full:
            r["prefill_ratio"] = r["prefill_s"] / full["prefill_s"]
            r["decode_speedup"] = r["decode_tok_s"] / full["decode_tok_s"]
            r["kv_ratio"] = r["kv_bytes"] / full["kv_bytes"]
            full_above = full["peak_bytes"] - weights
            r["peak_above_weights_ratio"] = above / full_above if full_above > 0 else nan
        ceiling = ceilings.get(r["budget"])
        r["decode_vs_ceiling"] = r["decode_tok_s"] / ceiling["decode_tok_s"] if ceiling else nan
        if r["budget"] == "":
            continue
        budget = int(r["budget"])
        budget_bytes = budget_kv_bytes(config, budget, dtype)
        r["budget_kv_bytes"] = budget_bytes
        r["peak_vs_budget"] = above / budget_bytes
        r["decode_mem_vs_budget"] = r["decode_above_weights_bytes"] / budget_bytes
        r["peak_minus_activations_vs_budget"] = (above - activations) / budget_bytes
        if r["method"] == CEILING:  # its prompt is the budget: the 32k prefill's activations do not apply
            continue
        allowance = memory_allowance(config, budget, r["prompt_tokens"], dtype)
        own = above - activations
        r["layer_prompt_kv_bytes"] = layer_prompt_kv_bytes(config, r["prompt_tokens"], dtype)
        r["mem_allowance_bytes"] = allowance
        r["peak_minus_activations_bytes"] = own
        r["mem_vs_allowance"] = own / allowance
        r["mem_target_passed"] = bool(own <= allowance) if math.isfinite(own) else None
