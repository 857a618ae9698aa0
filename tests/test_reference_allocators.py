"""Allocators and the whole compression pipeline against plain-Python references (docs/methods.md).

* Layer allocators: uniform; PyramidKV's linear schedule (floored, and upstream's integer step);
  proportional water-filling (LAVa's entropy, CAKE's preference with ``redistribute="proportional"``)
  with per-layer caps and surplus redistribution, computed here with exact fractions; the online
  scheme (earlier layers only shrink). Official CAKE's even redistribution is tested in
  test_cake_budgets.py.
* Head allocators: uniform; Ada-KV/LAVa flat top-k with the floor in both modes.
* End to end: a tiny random Llama is prefilled once with a ``DynamicCache`` (queries recomputed from a
  forward pre-hook, keys/values read from the cache); the loop reference runs scores -> layer budgets
  -> head caps -> kept positions, and every method's ``CompressedCache`` must store exactly those
  positions. A synthetic many-layer driver checks that LAVa's online allocation ends equal to the
  one-shot allocation with the final budgets.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch
from test_cake_budgets import ref_cake_adjust_budgets
from test_reference_scorers import (  # the loop references of the scorers (sibling test module)
    ref_cake,
    ref_kept,
    ref_lava,
    ref_sink_recency,
    ref_snapkv,
    ref_window_attention,
    to_lists,
)

from lava.allocation import (
    EntropyLayerBudget,
    FlatHeadBudget,
    PreferenceLayerBudget,
    ProportionalLayerBudget,
    PyramidLayerBudget,
    UniformHeadBudget,
    UniformLayerBudget,
)
from lava.cache import CompressedCache
from lava.method import CompressionMethod
from lava.scorers.cake import CakeScorer
from lava.scorers.lava import LavaScorer
from lava.scorers.snapkv import SnapKVScorer
from lava.scorers.streamingllm import SinkRecencyScorer

# ---------------------------------------------------------------------------------------------------------
# Loop references
# ---------------------------------------------------------------------------------------------------------


def ref_uniform_layers(caps: list[int], b: int) -> list[int]:
    """SnapKV / Ada-KV: every layer gets ``b = B0 - w`` (never more than its prefix)."""
    return [min(b, cap) for cap in caps]


def ref_pyramid(caps: list[int], num_layers: int, b: int, beta: float) -> list[int]:
    """PyramidKV's endpoints (``min = b // beta``, ``max = 2b - min``, clamped to the prefix), with the
    library's documented schedule in between: ``min + floor((L-1-l) * (max - min) / (L-1))``."""
    prefix = max(caps)
    low = math.floor(Fraction(b) / Fraction(beta))
    high = 2 * b - low
    if high >= prefix:
        high = prefix
        low = 2 * b - high
    out = []
    for layer, cap in enumerate(caps):
        budget = low + ((num_layers - 1 - layer) * (high - low)) // (num_layers - 1)
        out.append(max(0, min(budget, cap)))
    return out


def ref_pyramid_upstream(prefix: int, num_layers: int, b: int, beta: int, window: int = 0) -> list[int]:
    """Upstream PyramidKV (KVCache-Factory ``PyramidKVCluster``) verbatim: ``step = (max - min) // (L - 1)``;
    layer l keeps ``max - l * step``; a prompt shorter than ``2b`` tokens keeps the uniform ``b``."""
    if prefix + window < 2 * b:
        return [b] * num_layers
    low = b // beta
    high = 2 * b - low
    if high >= prefix:
        high = prefix
        low = 2 * b - high
    step = (high - low) // (num_layers - 1)
    return [high - layer * step for layer in range(num_layers)]


def ref_proportional(stats: list, caps: list[int], num_layers: int, b: int) -> list[int]:
    """Water-filling with exact fractions: the level ``lam`` with ``sum_l min(P_l, lam * s_l) = L * b``;
    layer l gets ``min(P_l, floor(lam * s_l))``. Uncapped, this is LAVa's ``int(s_l / sum s * L * b)``;
    capped layers' surplus goes to the others in proportion to their statistic.

    Computed the textbook way (cap every layer whose share reaches its cap, recompute, repeat), not
    by sorting thresholds as the library does. Non-finite, missing or negative statistics count 0; if
    all are 0 the split is uniform.
    """
    return ref_proportional_detail(stats, caps, num_layers, b)[0]


def ref_proportional_detail(
    stats: list, caps: list[int], num_layers: int, b: int
) -> tuple[list[int], set[int]]:
    """:func:`ref_proportional` and the uncapped layers whose exact share ``lam * s_l`` is an integer."""
    total = num_layers * b
    values = [Fraction(s) if s is not None and math.isfinite(s) and s > 0 else Fraction(0) for s in stats]
    if sum(caps) <= total:
        return list(caps), set()
    if sum(values) == 0:
        values = [Fraction(1)] * len(caps)
    capped: set[int] = set()
    while True:
        free = [i for i in range(len(caps)) if i not in capped and values[i] > 0]
        if not free:  # every layer with weight is at its cap: nothing left to share
            return [caps[i] if values[i] > 0 else 0 for i in range(len(caps))], set()
        lam = (total - sum(caps[i] for i in capped)) / sum(values[i] for i in free)
        newly = [i for i in free if lam * values[i] >= caps[i]]
        if not newly:
            break
        capped.update(newly)
    budgets = [
        caps[i] if i in capped else (math.floor(lam * values[i]) if values[i] > 0 else 0)
        for i in range(len(caps))
    ]
    integral = {i for i in free if (lam * values[i]).denominator == 1}
    return budgets, integral


def ref_uniform_heads(hkv: int, prefix: int, budget: int) -> list[int]:
    return [min(budget, prefix)] * hkv


def ref_flat_heads(scores: list, budget: int, base_budget: int, alpha: float, floor_mode: str) -> list[int]:
    """Ada-KV / LAVa: counts of each head in the layer's flat top ``Hkv * B``; ``cap = round(c(1-a) + F)``.

    ``F = int(alpha * B)`` ("exact", Ada-KV's intended floor) or ``int(alpha * B0)`` ("upstream", LAVa's
    stale floor). In exact mode the rounding overshoot is taken back from the heads that rounded up the
    most (ties to the lower head), so that ``sum(cap) <= Hkv * B``. ``B >= P`` keeps everything.
    """
    hkv, prefix = len(scores), len(scores[0])
    if budget >= prefix:
        return [prefix] * hkv
    flat = [(scores[h][j], h * prefix + j) for h in range(hkv) for j in range(prefix)]
    flat.sort(key=lambda item: (-item[0], item[1]))
    counts = [0] * hkv
    for _, index in flat[: hkv * budget]:
        counts[index // prefix] += 1
    floor = int(alpha * (budget if floor_mode == "exact" else base_budget))
    raw = [c * (1.0 - alpha) + floor for c in counts]
    caps = [round(r) for r in raw]  # Python's round is half-to-even, like torch.round
    if floor_mode == "exact":
        excess = sum(caps) - hkv * budget
        if excess > 0:
            worst = sorted(range(hkv), key=lambda h: (-(caps[h] - raw[h]), h))
            for h in worst[:excess]:
                caps[h] -= 1
    return [min(max(c, 0), prefix) for c in caps]


# ---------------------------------------------------------------------------------------------------------
# Layer allocators
# ---------------------------------------------------------------------------------------------------------


def _random_stats(rng: random.Random, count: int) -> list:
    kind = rng.random()
    if kind < 0.15:
        return [0.93] * count  # all equal: the exact-integer share must not lose an entry to rounding
    stats = [rng.uniform(0.05, 3.0) for _ in range(count)]
    if kind > 0.8 and count > 2:
        stats[rng.randrange(count)] = rng.uniform(20, 60)  # one dominant layer, capped at its prefix
    return stats


@pytest.mark.parametrize("seed", range(6))
def test_uniform_layer_budget(seed):
    rng = random.Random(seed)
    num_layers = rng.randint(1, 12)
    caps = [rng.randint(0, 200) for _ in range(num_layers)]
    b = rng.randint(1, 150)
    stats = _random_stats(rng, num_layers)
    for seen in range(1, num_layers + 1):
        got = UniformLayerBudget().allocate(stats[:seen], caps[:seen], num_layers, b)
        assert got == ref_uniform_layers(caps[:seen], b)


PYRAMID_CASES = [
    # (layers, b, prefix, beta)
    (3, 16, 500, 20),
    (8, 96, 1000, 20),
    (32, 96, 4000, 20),
    (30, 992, 3000, 20),
    (28, 96, 150, 20),  # max clamped to the prefix: max = P, min = 2b - P
    (8, 40, 60, 5),
    (4, 200, 150, 20),  # b > P: every layer keeps its whole prefix
    (30, 7, 100, 20),  # b // beta == 0
]


@pytest.mark.parametrize(("num_layers", "b", "prefix", "beta"), PYRAMID_CASES)
def test_pyramid_layer_budget(num_layers, b, prefix, beta):
    allocator = PyramidLayerBudget(beta=beta)
    caps = [prefix] * num_layers
    full = allocator.allocate([None] * num_layers, caps, num_layers, b)
    assert full == ref_pyramid(caps, num_layers, b, beta)
    # online calls see a prefix of the layers and give them the same budgets
    for seen in (1, num_layers // 2, num_layers - 1):
        if seen >= 1:
            assert allocator.allocate([None] * seen, caps[:seen], num_layers, b) == full[:seen]
    # budget unit: never more than L * b; falls (weakly) with depth unless clamped at the prefix
    assert sum(full) <= num_layers * b
    if 2 * b - b // beta < prefix:
        assert all(x >= y for x, y in zip(full, full[1:], strict=False))
        assert full[0] == 2 * b - b // beta and full[-1] == b // beta


def test_pyramid_single_layer_gets_the_whole_budget():
    assert PyramidLayerBudget(beta=20).allocate([None], [500], 1, 96) == [96]


@pytest.mark.parametrize(
    ("num_layers", "b", "prefix", "beta"), [c for c in PYRAMID_CASES if 2 * c[1] <= c[2]]
)
def test_pyramid_documented_deviation_from_upstream_step(num_layers, b, prefix, beta):
    """Upstream's integer ``step`` makes later layers keep more than the linear schedule, so its total can
    exceed ``L * b``; the library floors each layer of the exact line instead (never above upstream, same
    first layer, total within budget)."""
    ours = PyramidLayerBudget(beta=beta).allocate([None] * num_layers, [prefix] * num_layers, num_layers, b)
    upstream = ref_pyramid_upstream(prefix, num_layers, b, beta)
    assert ours[0] == upstream[0]
    assert all(o <= u for o, u in zip(ours, upstream, strict=True))
    assert sum(ours) <= num_layers * b <= sum(upstream)


@pytest.mark.parametrize(("num_layers", "b", "prefix", "beta"), PYRAMID_CASES)
@pytest.mark.parametrize("window", [8, 32])
def test_pyramid_upstream_schedule_matches_kvcache_factory(num_layers, b, prefix, beta, window):
    allocator = PyramidLayerBudget(beta=beta, schedule="upstream", window=window)
    caps = [prefix] * num_layers
    full = allocator.allocate([None] * num_layers, caps, num_layers, b)
    expect = [min(x, prefix) for x in ref_pyramid_upstream(prefix, num_layers, b, beta, window)]
    assert full == expect
    for seen in (1, num_layers // 2, num_layers - 1):  # online calls see a prefix of the same schedule
        assert allocator.allocate([None] * seen, caps[:seen], num_layers, b) == full[:seen]


@pytest.mark.parametrize(
    ("num_layers", "b", "prefix", "window", "schedule", "expected"),
    [
        # SmolLM2 at B0 = 128, w = 32, 1467 tokens: min = 4, max = 188, step = 184 // 29 = 6
        (30, 96, 1435, 32, "upstream", [188 - 6 * layer for layer in range(30)]),
        # max clamped to P = 170: min = 192 - 170 = 22, step = 148 // 3 = 49
        (4, 96, 170, 32, "upstream", [170, 121, 72, 23]),
        # the floored line through the same end points: 22 + floor((3 - l) * 148 / 3)
        (4, 96, 170, 32, "floor", [170, 120, 71, 22]),
        # a 182-token prompt is shorter than 2b = 192: upstream keeps SnapKV's uniform b
        (4, 96, 150, 32, "upstream", [96, 96, 96, 96]),
        # ...where the floored schedule runs from max = P = 150 to min = 42 in steps of 108 / 3
        (4, 96, 150, 32, "floor", [150, 114, 78, 42]),
    ],
)
def test_pyramid_schedules_hand_computed(num_layers, b, prefix, window, schedule, expected):
    allocator = PyramidLayerBudget(beta=20, schedule=schedule, window=window)
    assert allocator.allocate([None] * num_layers, [prefix] * num_layers, num_layers, b) == expected


def test_pyramid_upstream_schedule_totals_at_smollm2_scale():
    """30 layers, B0 = 128, w = 32, 3 KV heads: the floored schedule stays within L x Hkv x B0 = 11,520
    entries, upstream's integer step keeps 11,970 (3030 non-window entries per head + the windows)."""
    caps = [1435] * 30
    upstream = PyramidLayerBudget(beta=20, schedule="upstream", window=32).allocate([None] * 30, caps, 30, 96)
    floor = PyramidLayerBudget(beta=20).allocate([None] * 30, caps, 30, 96)
    assert 3 * (sum(upstream) + 30 * 32) == 11_970
    assert 3 * (sum(floor) + 30 * 32) == 11_478 <= 11_520


def test_pyramid_rejects_unknown_schedule_and_missing_window():
    with pytest.raises(ValueError, match="schedule"):
        PyramidLayerBudget(schedule="linear")
    with pytest.raises(ValueError, match="window"):
        PyramidLayerBudget(schedule="upstream")


def assert_budgets_match(got: list[int], ref: list[int], integral: set[int]) -> None:
    """Equal to the exact reference, except that a layer whose exact share is an integer may come out
    one lower (float rounding; see test_proportional_exact_integer_shares_are_not_lost below)."""
    assert len(got) == len(ref)
    for index, (g, r) in enumerate(zip(got, ref, strict=True)):
        assert g == r or (index in integral and g == r - 1), (index, got, ref)


@pytest.mark.parametrize(
    "make",
    [ProportionalLayerBudget, EntropyLayerBudget, lambda: PreferenceLayerBudget(redistribute="proportional")],
    ids=["proportional", "entropy", "preference-proportional"],
)
@pytest.mark.parametrize("seed", range(40))
def test_proportional_water_filling_matches_exact_reference(make, seed):
    rng = random.Random(seed)
    num_layers = rng.randint(2, 24)
    b = rng.randint(1, 120)
    if rng.random() < 0.5:
        caps = [rng.randint(b // 2, 4 * b) for _ in range(num_layers)]  # uneven prefixes: some layers capped
    else:
        caps = [rng.randint(b, 3 * b)] * num_layers
    stats = _random_stats(rng, num_layers)
    got = make().allocate(stats, caps, num_layers, b)
    ref, integral = ref_proportional_detail(stats, caps, num_layers, b)
    assert_budgets_match(got, ref, integral)
    assert all(0 <= x <= cap for x, cap in zip(got, caps, strict=True))
    total = num_layers * b
    if sum(caps) > total:
        # all of L * b is spent except what the per-layer floors drop (< 1 entry per uncapped layer)
        assert total - num_layers < sum(got) <= total
    else:
        assert got == caps


def test_proportional_redistributes_surplus_of_capped_layers():
    # 4 layers, b = 10 (total 40), stats 1:1:1:5, prefixes 30 except layer 3 capped at 12.
    # Uncapped: layer 3 would get 25 > 12. Water level: 3 * lam + 12 = 40 -> lam = 28/3 -> 9 each.
    got = EntropyLayerBudget().allocate([1.0, 1.0, 1.0, 5.0], [30, 30, 30, 12], 4, 10)
    assert got == [9, 9, 9, 12]
    # without the cap it is LAVa's int(s / sum(s) * L * b)
    assert EntropyLayerBudget().allocate([1.0, 1.0, 1.0, 5.0], [30] * 4, 4, 10) == [5, 5, 5, 25]


def test_proportional_degenerate_statistics():
    allocator = ProportionalLayerBudget()
    # no statistic at all (scorer without one): uniform split
    assert allocator.allocate([None, None, None], [50, 50, 50], 3, 10) == [10, 10, 10]
    # non-finite / negative statistics weigh 0
    got = allocator.allocate([float("nan"), -1.0, 2.0, float("inf")], [50] * 4, 4, 10)
    assert got == ref_proportional([float("nan"), -1.0, 2.0, float("inf")], [50] * 4, 4, 10) == [0, 0, 40, 0]
    # everything fits: every layer keeps its prefix
    assert allocator.allocate([1.0, 3.0], [5, 7], 2, 10) == [5, 7]


def test_proportional_all_weighted_layers_capped_does_not_crash():
    # total 20; the only weighted layer (cap 5) is capped, the zero-weight layer gets nothing
    assert ref_proportional([1.0, 0.0], [5, 100], 2, 10) == [5, 0]
    assert ProportionalLayerBudget().allocate([1.0, 0.0], [5, 100], 2, 10) == [5, 0]


@pytest.mark.parametrize(
    ("stats", "caps", "num_layers", "b", "expected"),
    [
        ([0.7] * 4, [1000] * 4, 4, 96, [96] * 4),  # equal statistics: each layer's share is exactly b
        ([0.3] * 6, [1000] * 6, 6, 280, [280] * 6),
        ([1.3, 1.6, 0.1], [50, 50, 500], 3, 40, [50, 50, 20]),  # two capped layers leave exactly 20
    ],
)
def test_proportional_exact_integer_shares_are_not_lost(stats, caps, num_layers, b, expected):
    assert ref_proportional(stats, caps, num_layers, b) == expected
    assert ProportionalLayerBudget().allocate(stats, caps, num_layers, b) == expected


@pytest.mark.parametrize("seed", range(10))
def test_proportional_online_budgets_only_shrink(seed):
    """LAVa's online scheme: after each layer the whole total is shared among the layers seen,
    so the budget of an earlier layer never grows as later layers arrive."""
    rng = random.Random(100 + seed)
    num_layers = rng.randint(2, 30)
    b = rng.randint(4, 100)
    prefix = rng.randint(b + 1, 5 * b)
    stats = _random_stats(rng, num_layers)
    previous: list[int] = []
    for seen in range(1, num_layers + 1):
        budgets = EntropyLayerBudget().allocate(stats[:seen], [prefix] * seen, num_layers, b)
        assert_budgets_match(budgets, *ref_proportional_detail(stats[:seen], [prefix] * seen, num_layers, b))
        assert all(new <= old for new, old in zip(budgets, previous, strict=False))
        previous = budgets


# ---------------------------------------------------------------------------------------------------------
# Head allocators
# ---------------------------------------------------------------------------------------------------------


def _random_scores(rng: random.Random, hkv: int, prefix: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(rng.randrange(10**6))
    scores = torch.rand(hkv, prefix, generator=gen) * torch.rand(hkv, 1, generator=gen) * 2
    if rng.random() < 0.4:  # many exact ties, as max pooling produces them
        scores = torch.round(scores * 8) / 8
    return scores


@pytest.mark.parametrize("seed", range(8))
def test_uniform_head_budget(seed):
    rng = random.Random(seed)
    hkv, prefix = rng.choice([1, 2, 3, 8]), rng.randint(1, 300)
    scores = _random_scores(rng, hkv, prefix)
    for budget in (1, prefix // 2 + 1, prefix, prefix + 3):
        got = UniformHeadBudget().caps(scores, budget, budget + 32)
        assert got.dtype == torch.long
        assert got.tolist() == ref_uniform_heads(hkv, prefix, budget)


@pytest.mark.parametrize("floor_mode", ["exact", "upstream"])
@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(10))
def test_flat_head_budget_matches_reference(seed, alpha, floor_mode):
    rng = random.Random(seed)
    hkv = rng.choice([2, 3, 4, 8])
    prefix = rng.choice([1, 5, 37, 300])
    scores = _random_scores(rng, hkv, prefix)
    allocator = FlatHeadBudget(alpha=alpha, floor=floor_mode)
    for budget in sorted({1, max(prefix // 3, 1), max(prefix - 1, 1), prefix, prefix + 4}):
        base = budget + rng.choice([4, 32])
        got = allocator.caps(scores, budget, base)
        ref = ref_flat_heads(to_lists(scores.float()), budget, base, alpha, floor_mode)
        assert got.tolist() == ref, (budget, base)
        if floor_mode == "exact":
            assert int(got.sum()) <= hkv * budget
        if alpha == 0.0 and budget < prefix:
            assert int(got.sum()) == hkv * budget  # pure flat top-k: the counts themselves


def test_flat_head_budget_rounds_half_to_even_and_trims_exactly():
    scores = torch.tensor([[9.0, 8.0, 7.0, 0.5, 0.4], [0.3, 0.2, 0.1, 0.05, 0.01]])
    # counts over the top 6: head 0 has 5, head 1 has 1; F = int(0.5 * 3) = 1 -> raw (3.5, 1.5)
    # round half to even -> (4, 2), sum 6 == 2 * 3: nothing to trim
    assert FlatHeadBudget(alpha=0.5).caps(scores, 3, 35).tolist() == [4, 2]
    assert ref_flat_heads(scores.tolist(), 3, 35, 0.5, "exact") == [4, 2]
    # upstream floor F = int(0.5 * 35) = 17 -> raw (19.5, 17.5) -> (20, 18), clamped to P = 5
    assert FlatHeadBudget(alpha=0.5, floor="upstream").caps(scores, 3, 35).tolist() == [5, 5]


# ---------------------------------------------------------------------------------------------------------
# End-to-end reference on a tiny random Llama
# ---------------------------------------------------------------------------------------------------------

METHODS = {
    "snapkv": (lambda: SnapKVScorer(7, "max", "mean"), UniformLayerBudget, UniformHeadBudget),
    "pyramidkv": (
        lambda: SnapKVScorer(7, "max", "mean"),
        lambda: PyramidLayerBudget(beta=20),
        UniformHeadBudget,
    ),
    "adakv": (
        lambda: SnapKVScorer(7, "max", "mean"),
        UniformLayerBudget,
        lambda: FlatHeadBudget(0.2, "exact"),
    ),
    "pyramidkv_upstream": (
        lambda: SnapKVScorer(7, "max", "mean"),
        lambda: PyramidLayerBudget(beta=20, schedule="upstream", window=0),  # window set by build_method
        UniformHeadBudget,
    ),
    "cake": (lambda: CakeScorer(200.0, 5, "avg", 1.6, 0.4), PreferenceLayerBudget, UniformHeadBudget),
    "cake_proportional": (
        lambda: CakeScorer(200.0, 5, "avg", 1.6, 0.4),
        lambda: PreferenceLayerBudget(redistribute="proportional"),
        UniformHeadBudget,
    ),
    "lava": (LavaScorer, EntropyLayerBudget, lambda: FlatHeadBudget(0.2, "exact")),
    "lava_upstream_floor": (LavaScorer, EntropyLayerBudget, lambda: FlatHeadBudget(0.2, "upstream")),
    "lava_layer_only": (LavaScorer, EntropyLayerBudget, UniformHeadBudget),
    "lava_head_only": (LavaScorer, UniformLayerBudget, lambda: FlatHeadBudget(0.2, "exact")),
    "streamingllm": (lambda: SinkRecencyScorer(4), UniformLayerBudget, UniformHeadBudget),
}
SNAPKV_FAMILY = {"snapkv", "pyramidkv", "pyramidkv_upstream", "adakv"}  # GQA mean, then max pooling


def build_method(name: str, budget: int, window: int) -> CompressionMethod:
    scorer, layers, heads = METHODS[name]
    method = CompressionMethod(name, budget, window, scorer(), layers(), heads())
    if getattr(method.layer_allocator, "window", None) is not None:  # the upstream schedule's window
        method.layer_allocator.window = window
    return method


def ref_layer_scores(
    name: str, q: list, k: list, v: list, window: int, scaling: float
) -> tuple[list, float | None]:
    """The loop reference scorer of ``name`` on one layer's captured prefill tensors."""
    hkv, n = len(k), len(k[0])
    prefix = n - window
    if name == "streamingllm":
        return ref_sink_recency(hkv, n, window, 4), None
    probs = ref_window_attention(q, k, scaling)
    if name in SNAPKV_FAMILY:
        return ref_snapkv(probs, hkv, prefix, 7, "max", "mean"), None
    if name.startswith("cake"):
        return ref_cake(probs, hkv, prefix, 200.0, 5, 1.6, 0.4)
    return ref_lava(probs, v, prefix, 7, "max", "max")


def ref_pipeline(name: str, layers: list, budget: int, window: int, scaling: float) -> dict:
    """The one-shot form of every method: scores -> layer budgets -> head caps -> kept positions, for every layer."""
    n = len(layers[0][1][0])
    hkv = len(layers[0][1])
    num_layers = len(layers)
    if n <= budget:
        return {"kept": [[list(range(n))] * hkv for _ in layers], "budgets": None, "caps": None}
    prefix = n - window
    b = budget - window
    scored = [ref_layer_scores(name, q, k, v, window, scaling) for q, k, v in layers]
    stats = [stat for _, stat in scored]
    caps_layer = [prefix] * num_layers
    if name in ("snapkv", "adakv", "lava_head_only", "streamingllm"):
        budgets = ref_uniform_layers(caps_layer, b)
    elif name == "pyramidkv":
        budgets = ref_pyramid(caps_layer, num_layers, b, 20)
    elif name == "pyramidkv_upstream":
        budgets = ref_pyramid_upstream(prefix, num_layers, b, 20, window)
    elif name == "cake":
        budgets = ref_cake_adjust_budgets(stats, prefix, num_layers, b)
    else:
        budgets = ref_proportional(stats, caps_layer, num_layers, b)
    out_caps, kept = [], []
    for (scores, _), layer_budget in zip(scored, budgets, strict=True):
        if name in ("adakv", "lava", "lava_head_only"):
            caps = ref_flat_heads(scores, layer_budget, budget, 0.2, "exact")
        elif name == "lava_upstream_floor":
            caps = ref_flat_heads(scores, layer_budget, budget, 0.2, "upstream")
        else:
            caps = ref_uniform_heads(hkv, prefix, layer_budget)
        out_caps.append(caps)
        kept.append(ref_kept(scores, caps, n, window))
    return {"kept": kept, "budgets": budgets, "caps": out_caps, "scores": [s for s, _ in scored]}


def tiny_llama(seed: int = 0, num_layers: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=num_layers,
        intermediate_size=128,
        vocab_size=128,
        head_dim=16,
        max_position_embeddings=512,
        initializer_range=0.15,  # sharper attention than the default 0.02: clear score gaps
    )
    return LlamaForCausalLM(config).eval()


def capture_prefill(model, input_ids: torch.Tensor) -> list[tuple[list, list, list]]:
    """Post-RoPE (queries, keys, values) of every layer's prefill, without the library.

    Keys and values come from a ``DynamicCache``; queries are recomputed from each attention module's
    input (forward pre-hook): ``q_proj``, split into heads, RoPE with the module's position embeddings.
    """
    from transformers import DynamicCache
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    inputs: dict[int, tuple] = {}
    hooks = []
    for index, layer in enumerate(model.model.layers):

        def hook(module, args, kwargs, index=index):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            inputs[index] = (hidden.detach(), kwargs["position_embeddings"])

        hooks.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    cache = DynamicCache(config=model.config)
    try:
        with torch.no_grad():
            model(input_ids, past_key_values=cache, use_cache=True)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for index, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        hidden, (cos, sin) = inputs[index]
        with torch.no_grad():
            q = attn.q_proj(hidden).view(1, hidden.shape[1], -1, attn.head_dim).transpose(1, 2)
            q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        out.append((q[0], cache.layers[index].keys[0], cache.layers[index].values[0]))
    return out


E2E_SETTINGS = [
    # (prompt length, budget, window, prompt seed)
    (160, 40, 16, 1),
    (70, 24, 8, 2),
    (24, 24, 8, 3),  # n == budget: nothing is compressed
]


@pytest.fixture(scope="module")
def llama_refs():
    model = tiny_llama()
    data = {}
    for n, budget, window, seed in E2E_SETTINGS:
        ids = torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(seed))
        captured = capture_prefill(model, ids)
        layers = [(to_lists(q[:, -window:]), to_lists(k), to_lists(v)) for q, k, v in captured]
        data[(n, budget, window)] = (ids, layers)
    return model, data


def _e2e_params():
    out = []
    for name in METHODS:
        for n, budget, window, _ in E2E_SETTINGS:
            out.append(pytest.param(name, (n, budget, window), id=f"{name}-n{n}-B{budget}-w{window}"))
    return out


class RecordingScorer:
    """Wraps a scorer and keeps a copy of every layer's scores."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.scores = []

    def __call__(self, *args):
        result = self.scorer(*args)
        self.scores.append(result.scores.clone())
        return result


@pytest.mark.parametrize(("name", "setting"), _e2e_params())
def test_cache_keeps_exactly_the_reference_positions(llama_refs, name, setting):
    model, data = llama_refs
    n, budget, window = setting
    ids, layers = data[setting]
    scaling = model.model.layers[0].self_attn.scaling
    ref = ref_pipeline(name, layers, budget, window, scaling)

    method = build_method(name, budget, window)
    method.scorer = RecordingScorer(method.scorer)  # the cache frees its copy of the scores at the end
    cache = method.build_cache(model, max_new_tokens=4)
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)

    if ref["budgets"] is not None:
        assert cache.compressed
        for lib_scores, ref_scores in zip(method.scorer.scores, ref["scores"], strict=True):
            torch.testing.assert_close(
                lib_scores.double(), torch.tensor(ref_scores, dtype=torch.float64), rtol=1e-4, atol=1e-9
            )
        assert cache.layer_budgets == ref["budgets"]
        assert [layer.prefix_kept.tolist() for layer in cache.layers] == ref["caps"]
    else:
        assert not cache.compressed
    stored = [[p.tolist() for p in layer.positions] for layer in cache.layers]
    assert stored == ref["kept"]
    assert cache.kept_per_head() == [[len(p) for p in heads] for heads in ref["kept"]]
    # the packed rows are the full prefill KV at those positions, head after head
    for (_, keys, values), layer, heads in zip(layers, cache.layers, ref["kept"], strict=True):
        expect_k = torch.tensor([keys[h][j] for h, pos in enumerate(heads) for j in pos])
        expect_v = torch.tensor([values[h][j] for h, pos in enumerate(heads) for j in pos])
        torch.testing.assert_close(layer.prompt_keys.double(), expect_k.double(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.prompt_values.double(), expect_v.double(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# LAVa's online allocation ends equal to the one-shot allocation (synthetic layers, no model)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("floor_mode", ["exact", "upstream"])
@pytest.mark.parametrize("seed", range(4))
def test_online_lava_allocation_equals_one_shot(seed, floor_mode):
    """Feed 8 synthetic layers of very different sharpness through ``CompressedCache`` one at a time
    (each layer is compressed as soon as it arrives, earlier layers are shrunk later) and compare the
    final stored positions with the loop reference allocated once with all layers' statistics."""
    hq, hkv, d, n, window, budget, num_layers = 6, 3, 8, 90, 8, 24, 8
    gen = torch.Generator().manual_seed(1000 + seed)
    scaling = 1.0 / math.sqrt(d)
    method = CompressionMethod(
        "lava", budget, window, LavaScorer(), EntropyLayerBudget(), FlatHeadBudget(0.2, floor_mode)
    )
    cache = CompressedCache(method, num_layers, reserve=2)
    layers = []
    budgets_seen = []
    for index in range(num_layers):
        sharpness = 0.2 + 3.0 * torch.rand(1, generator=gen).item()  # entropy varies a lot across layers
        q = torch.randn(1, hq, n, d, generator=gen) * sharpness
        k = torch.randn(1, hkv, n, d, generator=gen)
        v = torch.randn(1, hkv, n, d, generator=gen)
        layer = cache.layers[index]
        keys, values = layer.update(k, v)
        layer.attend(q, scaling)
        budgets_seen.append(list(cache.layer_budgets))
        layers.append((to_lists(q[0, :, -window:]), to_lists(k[0]), to_lists(v[0])))
    # earlier layers were shrunk online: the first layer started above its final budget
    assert budgets_seen[0][0] > cache.layer_budgets[0]
    name = "lava" if floor_mode == "exact" else "lava_upstream_floor"
    ref = ref_pipeline(name, layers, budget, window, scaling)
    assert cache.layer_budgets == ref["budgets"]
    assert [layer.prefix_kept.tolist() for layer in cache.layers] == ref["caps"]
    assert [[p.tolist() for p in layer.positions] for layer in cache.layers] == ref["kept"]
    for (_, keys, _), layer, heads in zip(layers, cache.layers, ref["kept"], strict=True):
        expect = torch.tensor([keys[h][j] for h, pos in enumerate(heads) for j in pos])
        torch.testing.assert_close(layer.prompt_keys.double(), expect.double(), rtol=0, atol=1e-6)
