"""The fidelity reference on a hybrid model (the tiny random Gemma 3 of test_hybrid_attention.py).

A sliding-window layer keeps only its rolling window, and under the full cache its attention is
windowed too (each continuation token sees the last ``window`` positions, itself included). So:

* ``windowed_attention`` (the sliding layers' attention over kept rows) equals a float64 loop written
  from the mask's definition (key position ``k`` visible to query position ``q`` iff
  ``0 <= q - k < window``), also with rows dropped and with a continuation longer than the window;
* budget >= prompt (60 tokens, window 16): every method and the full cache score as the full cache
  (kl ~0, top-1 1, NLL change ~0, attention error ~0 on every layer), single or batched, and through
  the sweep's shared prefill;
* a small budget: the sliding layers' attention error stays ~0 (their window is never compressed)
  while every global layer's is clearly positive.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_hybrid_attention import GLOBAL, LAYER_TYPES, WINDOW, gemma3_config, prompt, registry_method
from transformers import DynamicCache

from eval.benchmarks.base import Sample
from eval.benchmarks.fidelity import Fidelity, compare_many, full_reference, measure
from eval.metrics.fidelity import windowed_attention
from eval.sweep import shared_prefill

N, M = 60, 6  # prompt tokens (> WINDOW: the sliding layers roll), teacher-forced positions
SLIDING = [i for i, kind in enumerate(LAYER_TYPES) if kind == "sliding_attention"]
NAMES = ["snapkv", "pyramidkv", "adakv", "lava"]
EXACT = 1e-5  # float rounding between the reference's SDPA and the fidelity's own attention (fp32)


@pytest.fixture(scope="module")
def gemma():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    return AutoModelForCausalLM.from_config(gemma3_config(), attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def sample():
    ids = prompt(N + M + 1, seed=4)[0]
    return ids[:N], ids[N:]


# ---------------------------------------------------------------------------------------------------------
# The windowed attention against a float64 loop
# ---------------------------------------------------------------------------------------------------------


def _windowed_loop(query, keys, values, heads, positions, new_keys, new_values, scaling, window, start):
    """Float64 loop: query head h (KV head h // g) at position start + i over the rows of its KV head
    and the new tokens, keeping key positions k with 0 <= (start + i) - k < window."""
    hq, m, d = query.shape
    g = hq // new_keys.shape[0]
    out = np.zeros((hq, m, d))
    for h in range(hq):
        kv = h // g
        for i in range(m):
            q_pos = start + i
            logits, vals = [], []
            for r in range(keys.shape[0]):
                if int(heads[r]) == kv and 0 <= q_pos - int(positions[r]) < window:
                    logits.append(float(query[h, i].double() @ keys[r].double()) * scaling)
                    vals.append(values[r].double().numpy())
            for j in range(m):
                if 0 <= i - j < window:
                    logits.append(float(query[h, i].double() @ new_keys[kv, j].double()) * scaling)
                    vals.append(new_values[kv, j].double().numpy())
            w = np.exp(np.array(logits) - max(logits))
            out[h, i] = (w[:, None] * np.stack(vals)).sum(0) / w.sum()
    return out


@pytest.mark.parametrize("m", [5, 9])  # 9 > window 6: the continuation's own keys leave the window too
def test_windowed_attention_matches_a_float64_loop(m):
    gen = torch.Generator().manual_seed(3)
    hq, hkv, d, start, window = 4, 2, 8, 20, 6
    query = torch.randn(hq, m, d, generator=gen)
    new_keys, new_values = torch.randn(hkv, m, d, generator=gen), torch.randn(hkv, m, d, generator=gen)
    # head 0 holds positions 12..19, head 1 a subset in shuffled row order (a row order the caller may give)
    positions = torch.tensor([12, 13, 14, 15, 16, 17, 18, 19, 19, 14, 17, 16])
    heads = torch.tensor([0] * 8 + [1] * 4)
    keys, values = torch.randn(12, d, generator=gen), torch.randn(12, d, generator=gen)
    got = windowed_attention(query, keys, values, heads, positions, new_keys, new_values, 0.3, window, start)
    expected = _windowed_loop(query, keys, values, heads, positions, new_keys, new_values, 0.3, window, start)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    # the window matters here: a wider one gives another output
    wider = windowed_attention(query, keys, values, heads, positions, new_keys, new_values, 0.3, 20, start)
    assert float((wider - got).abs().max()) > 1e-2


# ---------------------------------------------------------------------------------------------------------
# The fidelity scores on the tiny Gemma 3
# ---------------------------------------------------------------------------------------------------------


def _assert_full_fidelity(scores, tag):
    assert scores["kl"] < 1e-9, tag
    assert scores["top1"] == 1.0, tag
    assert abs(scores["nll_delta"]) < 1e-5, tag
    errors = scores["attn_err_per_layer"]
    assert len(errors) == len(LAYER_TYPES) and max(errors) < EXACT, (tag, errors)


def test_reference_layers_carry_the_sliding_windows(gemma, sample):
    reference = full_reference(gemma, *sample)
    assert [c.window for c in reference.layers] == [None if i in GLOBAL else WINDOW for i in range(8)]


@pytest.mark.parametrize("name", NAMES)
def test_no_eviction_scores_as_the_full_cache(gemma, sample, name):
    prompt_ids, continuation = sample
    method = registry_method(name, 64)  # >= the 60-token prompt
    scores, _ = measure(gemma, prompt_ids, continuation, method.build_cache(gemma, M))
    _assert_full_fidelity(scores, name)


def test_the_full_cache_scores_as_itself(gemma, sample):
    scores, _ = measure(gemma, *sample, DynamicCache(config=gemma.config))
    _assert_full_fidelity(scores, "full")
    assert scores["kl"] == 0.0 and scores["nll_delta"] == 0.0


def test_no_eviction_batched_scores_as_the_full_cache(gemma, sample):
    """Several caches teacher-forced in one forward (compare_many), as the sweep does."""
    prompt_ids, continuation = sample
    reference = full_reference(gemma, prompt_ids, continuation)
    caches = []
    for name in NAMES:
        cache = registry_method(name, 64).build_cache(gemma, M)
        with torch.no_grad():
            gemma(input_ids=prompt_ids[None], past_key_values=cache, use_cache=True)
        caches.append(cache)
    for name, (scores, _) in zip(NAMES, compare_many(gemma, reference, caches)):
        _assert_full_fidelity(scores, name)


def test_sweep_prefill_scores(gemma, sample):
    """The sweep's path (one shared prefill, its DynamicCache as the reference's full cache): no
    eviction scores as the full cache; a small budget leaves the sliding layers exact."""
    prompt_ids, continuation = sample
    methods = [registry_method("snapkv", 64), registry_method("lava", 40)]
    prefill = shared_prefill(gemma, prompt_ids[None], [*methods, None], M)
    fake = Sample(
        id="s",
        task="essays",
        prompt="",
        references=[],
        max_new_tokens=M,
        chat=False,
        meta={"continuation_ids": continuation.tolist()},
        question_start=None,
    )
    records = Fidelity(lengths=[N], continuation_tokens=M).run_prefilled(
        gemma, prefill.caches[-1], prefill.caches[:-1], prompt_ids.tolist(), fake, 0.0
    )
    exact, small = records
    assert exact["fidelity"]["kl"] < 1e-9 and exact["fidelity"]["top1"] == 1.0
    assert max(exact["attn_err_per_layer"]) < EXACT
    assert small["global_layers"] == GLOBAL
    assert max(small["attn_err_per_layer"][i] for i in SLIDING) < EXACT
    assert min(small["attn_err_per_layer"][i] for i in GLOBAL) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_small_budget_leaves_the_sliding_layers_exact(gemma, sample, name):
    prompt_ids, continuation = sample
    cache = registry_method(name, 40).build_cache(gemma, M)  # 40 < 60: the global layers evict
    scores, _ = measure(gemma, prompt_ids, continuation, cache)
    errors = scores["attn_err_per_layer"]
    assert max(errors[i] for i in SLIDING) < EXACT, (name, errors)
    assert min(errors[i] for i in GLOBAL) > 1e-3, (name, errors)
    assert scores["kl"] > 1e-6
