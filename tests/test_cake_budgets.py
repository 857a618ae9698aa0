"""Official CAKE layer budgets (antgroup/cakekv ``adjust_budgets``) against a loop reference.

The reference below is written from the upstream definition, step by step as upstream does it:
shares ``pref_l / sum(pref) * L * b`` truncated to integers; every layer clamped to the prefix ``P``
with the clamped surplus spread evenly over the layers below ``P`` (remainder to the lowest indices);
the rounding deficit spread the same way; upstream's eviction then keeps at most ``P`` per layer.
Hand-computed cases cover clamped layers, rounding deficits and the surplus that overshoots ``P``.
The cache test checks that the non-monotone allocation is done once, after the last layer, as
official CAKE does, and that the stored positions are the loop reference's.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from lava.allocation import PreferenceLayerBudget
from lava.cache import CompressedCache
from lava.method import CompressionMethod


def ref_cake_adjust_budgets(prefs: list, prefix: int, num_layers: int, b: int) -> list[int]:
    """Official CAKE: proportional shares, clamp + even surplus, even rounding deficit, clamp at eviction."""
    total = num_layers * b
    weights = [p if p is not None and math.isfinite(p) and p > 0 else 0.0 for p in prefs]
    if sum(weights) == 0:
        weights = [1.0] * len(weights)
    budgets = [int(w / sum(weights) * total) for w in weights]
    surplus = 0
    for i in range(len(budgets)):
        if budgets[i] > prefix:
            surplus += budgets[i] - prefix
            budgets[i] = prefix
    for amount in (surplus, None):  # first the clamped surplus, then the rounding deficit
        if amount is None:
            amount = total - sum(budgets)
        if amount <= 0:
            continue
        open_layers = [i for i in range(len(budgets)) if budgets[i] < prefix]
        if not open_layers:
            continue
        for i in open_layers:
            budgets[i] += amount // len(open_layers)
        for i in open_layers[: amount % len(open_layers)]:
            budgets[i] += 1
    return [min(budget, prefix) for budget in budgets]  # upstream's eviction keeps at most P


def allocate(prefs, prefix, num_layers, b):
    return PreferenceLayerBudget().allocate(prefs, [prefix] * len(prefs), num_layers, b)


@pytest.mark.parametrize(
    ("prefs", "prefix", "num_layers", "b", "expected"),
    [
        # shares 30 * (1, 2, 4) / 7 = 4.29, 8.57, 17.14 -> 4, 8, 17 (29): deficit 1 to layer 0
        ([1.0, 2.0, 4.0], 100, 3, 10, [5, 8, 17]),
        # shares 5, 5, 5, 25; layer 3 clamped to 12; surplus 13 = 3 x 4 + 1 -> 9+1, 9, 9
        ([1.0, 1.0, 1.0, 5.0], 12, 4, 10, [10, 9, 9, 12]),
        # a layer whose share is exactly P counts as clamped: the surplus 3 goes to layer 1 only
        ([4.0, 1.0, 5.0], 12, 3, 10, [12, 6, 12]),
        # shares 10.5, 1.5, 18 -> 10, 1, 18; clamp 18 -> 12, surplus 6 -> +3 each: 13, 4, 12 (29);
        # deficit 1 goes to layer 1 (layer 0 is past P, not below it); eviction clamps 13 -> 12 (total 29)
        ([3.5, 0.5, 6.0], 12, 3, 10, [12, 5, 12]),
        # every layer clamped: the surplus has nowhere to go
        ([1.0, 2.0], 5, 2, 10, [5, 5]),
        # equal preferences: every share is exactly b
        ([0.93] * 30, 1435, 30, 96, [96] * 30),
        # no statistic: uniform split; non-finite and negative preferences weigh 0
        ([None, None, None], 100, 3, 10, [10, 10, 10]),
        ([float("nan"), -1.0, 2.0, float("inf")], 50, 4, 10, [0, 0, 40, 0]),
    ],
)
def test_hand_computed(prefs, prefix, num_layers, b, expected):
    assert ref_cake_adjust_budgets(prefs, prefix, num_layers, b) == expected
    assert allocate(prefs, prefix, num_layers, b) == expected


def test_proportional_switch_keeps_the_water_filling():
    # the same clamped case as above: the surplus 13 goes in proportion (9 each), the deficit is dropped
    got = PreferenceLayerBudget(redistribute="proportional").allocate([1.0, 1.0, 1.0, 5.0], [12] * 4, 4, 10)
    assert got == [9, 9, 9, 12]


def test_rejects_unknown_redistribution():
    with pytest.raises(ValueError, match="redistribute"):
        PreferenceLayerBudget(redistribute="greedy")


@pytest.mark.parametrize("seed", range(60))
def test_matches_loop_reference(seed):
    rng = random.Random(seed)
    num_layers = rng.randint(1, 32)
    b = rng.randint(1, 600)
    prefix = rng.randint(b + 1, 4 * b + 1)
    prefs = [rng.uniform(0.01, 5.0) ** 3 for _ in range(num_layers)]
    if num_layers > 2 and rng.random() < 0.5:
        for i in rng.sample(range(num_layers), k=num_layers // 3):  # dominant layers, clamped at P
            prefs[i] *= rng.uniform(20, 200)
    got = allocate(prefs, prefix, num_layers, b)
    assert got == ref_cake_adjust_budgets(prefs, prefix, num_layers, b)
    assert all(0 <= x <= prefix for x in got)
    if max(got) < prefix:  # no layer reached P: the budgets add up to exactly L * b
        assert sum(got) == num_layers * b


def test_not_monotone_online():
    """Allocated online with the layers seen so far, an earlier layer's budget can grow (here through
    the rounding deficit), so the allocator says it is not monotone and the cache allocates once."""
    # 3 layers of 4 (b = 2, total 8, P = 4): shares 3.2, 1.6, 3.2 -> 3, 1, 3, deficit 1 -> 4, 1, 3
    assert allocate([2.0, 1.0, 2.0], 4, 4, 2) == [4, 1, 3]
    # 4 layers: shares 2.67, 1.33, 2.67, 1.33 -> 2, 1, 2, 1, deficit 2 -> 3, 2, 2, 1: layer 1 grew
    assert allocate([2.0, 1.0, 2.0, 1.0], 4, 4, 2) == [3, 2, 2, 1]
    assert PreferenceLayerBudget().monotone is False
    assert PreferenceLayerBudget(redistribute="proportional").monotone is True


class CountingScorer:
    """Scores from a fixed per-layer preference and random token scores (no model needed)."""

    def __init__(self, prefs: list[float], seed: int):
        self.prefs = prefs
        self.calls = 0
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, query_window, keys, values, window, scaling):
        from lava.scorers.base import LayerScores

        hkv, n, _ = keys.shape
        scores = torch.rand(hkv, n - window, generator=self.gen)
        pref = self.prefs[self.calls]
        self.calls += 1
        return LayerScores(scores, pref)

    def bind(self, model_name, budget):
        return None


@pytest.mark.parametrize("seed", range(4))
def test_cache_allocates_once_after_the_last_layer(seed):
    """Layers arrive one at a time: none is compressed before the last one; then every layer keeps the
    top-``B_l`` positions of each head (plus the window) with ``B_l`` the one-shot official budgets."""
    rng = random.Random(seed)
    hq, hkv, d, n, window, budget, num_layers = 4, 2, 8, 120, 8, 40, 6
    prefs = [rng.uniform(0.1, 2.0) for _ in range(num_layers)]
    prefs[rng.randrange(num_layers)] = 50.0  # one layer clamped at P: its surplus is spread evenly
    scorer = CountingScorer(prefs, seed)
    from lava.allocation import UniformHeadBudget

    method = CompressionMethod("cake", budget, window, scorer, PreferenceLayerBudget(), UniformHeadBudget())
    cache = CompressedCache(method, num_layers, reserve=2)
    gen = torch.Generator().manual_seed(seed)
    recorded = []
    for index in range(num_layers):
        layer = cache.layers[index]
        layer.update(torch.randn(1, hkv, n, d, generator=gen), torch.randn(1, hkv, n, d, generator=gen))
        before = scorer.gen.get_state()
        layer.attend(torch.randn(1, hq, n, d, generator=gen), 1.0 / math.sqrt(d))
        after = scorer.gen.get_state()
        replay = torch.Generator()
        replay.set_state(before)
        recorded.append(torch.rand(hkv, n - window, generator=replay))
        assert torch.equal(replay.get_state(), after)
        still_full = [cache.layers[j].full_keys is not None for j in range(index + 1)]
        assert all(still_full) == (index < num_layers - 1)
    expect = ref_cake_adjust_budgets(prefs, n - window, num_layers, budget - window)
    assert cache.layer_budgets == expect
    assert max(expect) == n - window
    for layer, scores, layer_budget in zip(cache.layers, recorded, expect, strict=True):
        for head, positions in enumerate(layer.positions):
            order = sorted(range(n - window), key=lambda j, h=head: (-float(scores[h, j]), j))
            kept = sorted(order[:layer_budget]) + list(range(n - window, n))
            assert positions.tolist() == kept
        assert layer.full_keys is None  # the prefill KV is released once stored
