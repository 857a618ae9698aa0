"""Kept entries on the device against the CPU's, for the same fp32 inputs.

The prompt's per-layer queries, keys and values are recorded once on the CPU (fp32, post-RoPE) and
fed, unchanged, to a fresh compressing cache on each device through the cache's ``update`` and the
registered ``"lava"`` attention function, the calls a model makes. Both devices then score, allocate
and select from identical inputs; only the rounding of the scoring arithmetic differs, so the kept
sets may differ only where two entries' scores are equal within that rounding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from eval.gpu_check.methods import build_named_method
from lava.attention import lava_attention_forward
from lava.policy import queries_read
from lava.scorers.base import needs_model_pass

RECORD_NAME = "gpu_check_record"
# Relative score difference under which two entries count as tied: the window softmax's fp32
# rounding (~1e-7) amplified by logits of magnitude up to ~100.
SCORE_RTOL = 1e-4

_recorded: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]] = {}


def _record_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA that also keeps this layer's (query, key, value, scaling) for the replay."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    scale = scaling if scaling is not None else module.scaling
    _recorded[module.layer_idx] = (query[0].clone(), key[0].clone(), value[0].clone(), scale)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )


@torch.inference_mode()
def record_layers(
    model: Any, ids: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]:
    """Per layer: query (Hq, n, d), keys and values (Hkv, n, d), scaling, from one uncached forward."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(RECORD_NAME, _record_forward)
    AttentionMaskInterface.register(RECORD_NAME, sdpa_mask)
    _recorded.clear()
    model.set_attn_implementation(RECORD_NAME)
    try:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        model.set_attn_implementation("sdpa")
    return [_recorded[i] for i in sorted(_recorded)]


@torch.inference_mode()
def replay(method: Any, model: Any, layers: list, device: str) -> list[list[torch.Tensor]]:
    """Kept prompt positions per layer and KV head when ``layers`` are compressed on ``device``."""
    cache = method.build_cache(model, max_new_tokens=1)
    for i, (query, keys, values, scale) in enumerate(layers):
        k, v = cache.update(keys[None].to(device), values[None].to(device), i)
        lava_attention_forward(None, query[None].to(device), k, v, None, scaling=scale)
    return kept_positions(cache)


def kept_positions(cache: Any) -> list[list[torch.Tensor]]:
    """Per layer, per KV head: the sorted prompt positions the cache stores (on the CPU)."""
    return [[p.cpu() for p in layer.positions] for layer in cache.layers]


def compare_kept(
    reference: list[list[torch.Tensor]], other: list[list[torch.Tensor]], scores: list[torch.Tensor]
) -> dict:
    """Differences between two kept sets, with how far each differing entry's score is from a tie.

    Parameters
    ----------
    reference, other : per layer, per head, positions kept (reference = CPU)
    scores : per layer, Tensor (Hkv, P): the reference device's scores of the evictable prefix

    Returns
    -------
    dict with ``heads``, ``identical_heads``, ``diff_entries`` (symmetric difference, summed),
    ``count_diff`` (sum of |kept counts| differences) and ``max_score_gap``: the largest
    ``|score(p) - cutoff| / |cutoff|`` over differing entries ``p``, where ``cutoff`` is the lowest
    score the reference keeps in that head (0 when nothing differs).
    """
    heads = identical = diff_entries = count_diff = 0
    gap = 0.0
    for layer_ref, layer_other, layer_scores in zip(reference, other, scores):
        for h, (a, b) in enumerate(zip(layer_ref, layer_other)):
            heads += 1
            count_diff += abs(len(a) - len(b))
            sa, sb = set(a.tolist()), set(b.tolist())
            differ = sorted(sa ^ sb)
            if not differ:
                identical += 1
                continue
            diff_entries += len(differ)
            s = layer_scores[h].double()
            prefix = s.shape[0]
            kept_prefix = [p for p in sa if p < prefix]
            cutoff = float(s[kept_prefix].min()) if kept_prefix else float(s.max())
            for p in differ:
                if p >= prefix:  # a window entry differs: never a tie
                    gap = float("inf")
                    continue
                gap = max(gap, abs(float(s[p]) - cutoff) / max(abs(cutoff), 1e-30))
    return {
        "heads": heads,
        "identical_heads": identical,
        "diff_entries": diff_entries,
        "count_diff": count_diff,
        "max_score_gap": gap,
    }


def kept_entries_check(
    model: Any,
    model_name: str,
    ids: torch.Tensor,
    methods: list[str],
    budgets: list[int],
    device: str,
    fits: Callable[[str, float], bool] = lambda what, seconds: True,
) -> list[dict]:
    """One row per (method, budget < prompt): device kept entries vs CPU kept entries, same inputs.

    ``fits(what, estimated seconds)`` returns False to skip an item (the time budget). Methods whose
    scorer runs model passes of its own (KVzip: :func:`lava.scorers.base.needs_model_pass`) cannot be
    replayed from recorded keys and values without the model; they are left out here and checked on
    the device by the token-identity phase and the sweep phase, which run the model.
    """
    layers = record_layers(model, ids)
    rows = []
    longest = 0.0
    for budget in budgets:
        for name in methods:
            if not fits(f"kept entries {name} @ {budget}", 1.5 * longest):
                continue
            t0 = time.perf_counter()
            method = build_named_method(name, budget, model_name)
            if needs_model_pass(method.scorer):
                continue
            on_cpu = replay(method, model, layers, "cpu")
            on_device = replay(build_named_method(name, budget, model_name), model, layers, device)
            window, read = method.window, queries_read(method)  # None: every prompt query (h2o, ...)
            with torch.inference_mode():
                scores = [
                    method.scorer(q if read is None else q[:, -read:], k, v, window, s).scores
                    for q, k, v, s in layers
                ]
            diff = compare_kept(on_cpu, on_device, scores)
            rows.append(
                {
                    "device": device,
                    "dtype": "float32",
                    "method": name,
                    "budget": budget,
                    "prompt_tokens": ids.shape[1],
                    "kept_cpu": sum(len(p) for layer in on_cpu for p in layer),
                    "kept_device": sum(len(p) for layer in on_device for p in layer),
                    **diff,
                    "score_rtol": SCORE_RTOL,
                    "identical": diff["diff_entries"] == 0,
                    "passed": diff["diff_entries"] == 0 or diff["max_score_gap"] <= SCORE_RTOL,
                }
            )
            longest = max(longest, time.perf_counter() - t0)
    return rows
