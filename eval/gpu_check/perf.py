"""Prefill, compression and decode time, KV bytes and peak device memory of one generation.

One run = one prefill of the prompt (a compressing cache compresses each layer right after its
attention) and ``decode_steps`` greedy decode steps, the next token chosen on the device (no host
round trip per step, as a serving loop would). ``full@budget`` is the full cache on the prompt's
first ``budget`` tokens: a cache that only ever held ``budget`` entries per head, with nothing to
score, evict or mask, i.e. the fastest decode and smallest memory a budget allows.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import torch

from eval.gpu_check.methods import make_method
from eval.perf.memory import kv_size
from lava.compat import cache_kwargs

FULL = "full"
CEILING = "full@budget"


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


def budget_kv_bytes(config: Any, budget: int, dtype: torch.dtype) -> int:
    """Bytes of ``budget`` key and value entries per KV head per layer: what a budget may store."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * config.num_key_value_heads * budget * 2 * head_dim * itemsize


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


@torch.inference_mode()
def run_generation(
    model: Any, model_name: str, ids: torch.Tensor, name: str, budget: int | None, decode_steps: int
) -> dict:
    """One timed generation of ``name`` (``full``, ``full@budget`` or a method config) at ``budget``."""
    from transformers import DynamicCache

    device = ids.device
    if name == CEILING:
        ids = ids[:, :budget]
    base = _reset_memory(device)
    compress = [0.0]
    if name in (FULL, CEILING):
        model.set_attn_implementation("sdpa")
        cache = DynamicCache(config=model.config)
    else:
        cache = make_method(name, budget, model_name).make_cache(model, max_new_tokens=decode_steps + 1)
        if hasattr(cache, "compress_layer"):  # per-layer compression, timed from outside the library
            cache.compress_layer = _timed(cache.compress_layer, compress, device)
        else:
            compress[0] = float("nan")
    kwargs = cache_kwargs(model, cache)
    _sync(device)
    t0 = time.perf_counter()
    logits = model(input_ids=ids, **kwargs, use_cache=True, logits_to_keep=1).logits
    _sync(device)
    t1 = time.perf_counter()
    peak_prefill = _peak(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    token = logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(decode_steps):
        logits = model(input_ids=token, **kwargs, use_cache=True).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    t2 = time.perf_counter()
    peak_decode = _peak(device)
    length = ids.shape[1]
    size = kv_size(cache, length)
    kv, kept = size["cache_bytes"], size["kept_entries"]
    out = {
        "method": name,
        "budget": budget or "",
        "prompt_tokens": length,
        "decode_steps": decode_steps,
        "prefill_s": t1 - t0,
        "compress_s": compress[0],
        "decode_s": t2 - t1,
        "decode_tok_s": decode_steps / (t2 - t1),
        "kv_bytes": kv,
        "kept_entries": kept,
        "base_bytes": base,
        "peak_prefill_bytes": peak_prefill,
        "peak_decode_bytes": peak_decode,
        "peak_bytes": max(peak_prefill, peak_decode),
        "finite": bool(torch.isfinite(logits).all()),
    }
    del cache, logits
    return out


def add_ratios(rows: list[dict], weights: int, activations: int, config: Any, dtype: torch.dtype) -> None:
    """Ratios against ``full`` and the ``full@budget`` of the same repeat; memory against the budget's KV bytes."""
    full = next((r for r in rows if r["method"] == FULL), None)
    ceilings = {(r["budget"], r.get("repeat", 0)): r for r in rows if r["method"] == CEILING}
    nan = float("nan")
    for r in rows:
        above = r["peak_bytes"] - weights
        r["peak_above_weights_bytes"] = above
        r["decode_above_weights_bytes"] = r["peak_decode_bytes"] - weights
        if full:
            r["prefill_ratio"] = r["prefill_s"] / full["prefill_s"]
            r["decode_speedup"] = r["decode_tok_s"] / full["decode_tok_s"]
            r["kv_ratio"] = r["kv_bytes"] / full["kv_bytes"]
            full_above = full["peak_bytes"] - weights
            r["peak_above_weights_ratio"] = above / full_above if full_above > 0 else nan
        ceiling = ceilings.get((r["budget"], r.get("repeat", 0)))
        r["decode_vs_ceiling"] = r["decode_tok_s"] / ceiling["decode_tok_s"] if ceiling else nan
        if r["budget"] != "":
            budget_bytes = budget_kv_bytes(config, int(r["budget"]), dtype)
            r["budget_kv_bytes"] = budget_bytes
            r["peak_vs_budget"] = above / budget_bytes
            r["decode_mem_vs_budget"] = r["decode_above_weights_bytes"] / budget_bytes
            r["peak_minus_activations_vs_budget"] = (above - activations) / budget_bytes
