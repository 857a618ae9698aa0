"""Greedy token identity against the full cache when the budget holds the whole prompt.

Nothing is evicted then, so a method differs from the full cache only in its attention path: the
greedy tokens must agree. In bf16 two exact paths round differently, so where the top two logits
of the reference lie within rounding of each other the argmax may flip; such a divergence is
reported with its margin and counts as a near-tie, not a failure. Any other divergence fails.

Greedy tokens alone are a weak test where near-ties are frequent, so each method's cache is also fed
the reference's tokens (teacher forcing) and its logits compared with the full cache's, against
the noise floor of two exact attention paths of transformers itself (eager vs sdpa).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch

from eval.generation import greedy_generate
from eval.gpu_check.methods import build_named_method
from lava.attention import decode_kernel
from lava.compat import cache_kwargs

# Relative margin (of the reference top logit) under which a flipped argmax counts as a near-tie:
# fp32 rounding is ~1e-7 relative, so 1e-4 is generous; bf16 keeps 8 bits (2^-8), so 2^-6 is 4 ulps.
TIE_RTOL = {torch.float32: 1e-4, torch.bfloat16: 2.0**-6}
# Teacher-forced logits (both caches fed the reference's tokens) may differ by at most
# NOISE_FACTOR x the difference between two of transformers' own exact attention paths (eager vs
# sdpa, the noise floor of exact arithmetic in this dtype on this device), and at least by
# LOGIT_FLOOR, in units of the reference logits' standard deviation. This keeps the check sharp where
# near-ties are common (random weights give flat distributions): a wrong path moves logits by O(1).
NOISE_FACTOR = 4.0
LOGIT_FLOOR = {torch.float32: 1e-3, torch.bfloat16: 0.1}


def decode_path(device: torch.device) -> str:
    """The decode attention path the library takes on ``device`` (layers whose heads are too uneven to
    pad stay on the masked matmul: :data:`lava.attention.PAD_SLACK`)."""
    return decode_kernel(device)


def _greedy(model: Any, ids: torch.Tensor, new_tokens: int, cache: Any) -> list[int]:
    gen = greedy_generate(model, ids, max_new_tokens=new_tokens, stop_ids=[], cache=cache, min_new_tokens=0)
    return gen.token_ids


@torch.inference_mode()
def reference_margin(
    model: Any, ids: torch.Tensor, ref: list[int], step: int, other: int
) -> tuple[float, float]:
    """(logit[ref[step]] - logit[other], |logit[ref[step]]|) of the full-cache model after ``ref[:step]``."""
    from transformers import DynamicCache

    model.set_attn_implementation("sdpa")
    prefix = torch.cat([ids, torch.tensor([ref[:step]], dtype=ids.dtype, device=ids.device)], dim=1)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=prefix, **cache_kwargs(model, cache), logits_to_keep=1).logits[0, -1].float()
    top = float(logits[ref[step]])
    return top - float(logits[other]), abs(top)


@torch.inference_mode()
def teacher_forced_logits(model: Any, ids: torch.Tensor, tokens: list[int], cache: Any) -> torch.Tensor:
    """(len(tokens), vocab) float logits: the prompt's last position, then after each of ``tokens[:-1]``."""
    logits = [model(input_ids=ids, **cache_kwargs(model, cache), logits_to_keep=1).logits[0, -1].float()]
    for token in tokens[:-1]:
        step = torch.tensor([[token]], device=ids.device)
        logits.append(model(input_ids=step, **cache_kwargs(model, cache)).logits[0, -1].float())
    return torch.stack(logits)


def token_identity(
    cpu_model: Any,
    model_name: str,
    ids: torch.Tensor,
    methods: list[str],
    device: str,
    dtypes: list[torch.dtype],
    new_tokens: int,
    fits: Callable[[str, float], bool] = lambda what, seconds: True,
) -> list[dict]:
    """One row per (dtype, method): greedy tokens of ``method`` at budget = prompt length vs full cache.

    Parameters
    ----------
    cpu_model : transformers model on the CPU (copied to ``device`` in each dtype)
    ids : Tensor, shape (1, P)
    fits : ``fits(what, estimated seconds)``, False to skip an item (the time budget)
    """
    from transformers import DynamicCache

    rows = []
    prompt = ids.shape[1]
    for dtype in dtypes:
        model = copy.deepcopy(cpu_model).to(device=device, dtype=dtype)
        dev_ids = ids.to(device)
        model.set_attn_implementation("sdpa")
        ref = _greedy(model, dev_ids, new_tokens, DynamicCache(config=model.config))
        ref_logits = teacher_forced_logits(model, dev_ids, ref, DynamicCache(config=model.config))
        ref_std = float(ref_logits.std())
        model.set_attn_implementation("eager")
        eager = teacher_forced_logits(model, dev_ids, ref, DynamicCache(config=model.config))
        model.set_attn_implementation("sdpa")
        noise = float((eager - ref_logits).abs().max()) / ref_std
        logit_tol = max(LOGIT_FLOOR[dtype], NOISE_FACTOR * noise)
        longest = 0.0
        for name in methods:
            if not fits(f"token identity {name} {dtype}", 1.5 * longest):
                continue
            t0 = time.perf_counter()
            method = build_named_method(name, prompt, model_name)
            cache = method.build_cache(model, max_new_tokens=new_tokens)
            out = _greedy(model, dev_ids, new_tokens, cache)
            compressed = bool(cache.report()["compressed"])
            forced = teacher_forced_logits(
                model, dev_ids, ref, method.build_cache(model, max_new_tokens=new_tokens)
            )
            logit_err = float((forced - ref_logits).abs().max()) / ref_std
            first = next((i for i, (a, b) in enumerate(zip(ref, out)) if a != b), None)
            margin = scale = float("nan")
            if first is not None:
                margin, scale = reference_margin(model, dev_ids, ref, first, out[first])
            tol = TIE_RTOL[dtype] * max(1.0, scale)
            near_tie = first is not None and margin <= tol
            rows.append(
                {
                    "device": device,
                    "dtype": str(dtype).removeprefix("torch."),
                    "method": name,
                    "budget": prompt,
                    "prompt_tokens": prompt,
                    "new_tokens": new_tokens,
                    "decode_path": decode_path(torch.device(device)),
                    "compressed": compressed,
                    "identical": first is None,
                    "first_divergence": "" if first is None else first,
                    "ref_margin": margin,
                    "tie_tol": tol,
                    "near_tie": near_tie,
                    "logit_err": logit_err,
                    "noise_floor": noise,
                    "logit_tol": logit_tol,
                    "passed": (first is None or near_tie) and not compressed and logit_err <= logit_tol,
                    "ref_tokens": " ".join(map(str, ref)),
                    "tokens": " ".join(map(str, out)),
                }
            )
            longest = max(longest, time.perf_counter() - t0)
        del model
    return rows
