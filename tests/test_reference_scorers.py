"""Scorers against plain-Python loop references written from the upstream definitions (docs/methods.md, "Scorers").

Each reference below works on nested lists with ``math`` only (one loop per head, query and key
position), so it shares no code path with the vectorised scorers. The tests compare the scores
(``rtol=1e-5``), the layer statistics and the kept sets (per-head top-k position sets, ties to the
lower position as the library documents) on random inputs with and without GQA, for prompts from
``window + 1`` to 600 tokens.

The helpers ``ref_*`` are reused by ``test_reference_allocators.py`` for the end-to-end reference.
"""

from __future__ import annotations

import functools
import math
import operator

import pytest
import torch

from lava.policy import kept_entries, ranks_by_score
from lava.scorers.cake import CakeScorer, tau_for
from lava.scorers.lava import LavaScorer
from lava.scorers.snapkv import SnapKVScorer
from lava.scorers.streamingllm import SinkRecencyScorer
from lava.scorers.window import window_attention

# ---------------------------------------------------------------------------------------------------------
# Loop references (from the upstream definitions, docs/methods.md).
# ---------------------------------------------------------------------------------------------------------

ENTROPY_EPS = 1e-16  # spec 1.1: LAVa's epsilon, in the denominator and inside the log
CAKE_LOG_EPS = 1e-10  # spec 4.5 (b): CAKE's entropy epsilon


def _dot(a: list[float], b: list[float]) -> float:
    return sum(map(operator.mul, a, b))


def ref_window_attention(qw: list, keys: list, scaling: float) -> list:
    """Spec 1.2 steps 1-3: ``A[h][i][j]`` for window query i (position n-w+i) over all n keys.

    ``qw[h][i]`` are the Hq window queries, ``keys[kv][j]`` the Hkv keys; query head h reads KV head
    ``h // g``. Keys after the query position are masked (probability 0); the softmax runs over the rest.
    """
    hq, w = len(qw), len(qw[0])
    hkv, n = len(keys), len(keys[0])
    group = hq // hkv
    out = []
    for h in range(hq):
        kv = keys[h // group]
        rows = []
        for i in range(w):
            qpos = n - w + i
            logits = [_dot(qw[h][i], kv[j]) * scaling for j in range(qpos + 1)]
            top = max(logits)
            exps = [math.exp(x - top) for x in logits]
            total = math.fsum(exps)
            rows.append([e / total for e in exps] + [0.0] * (n - 1 - qpos))
        out.append(rows)
    return out


def ref_window_mean(probs: list, prefix: int) -> list:
    """Spec 1.2 step 4: ``abar[h][j] = mean_i A[h][i][j]`` over the window queries, prefix keys only."""
    out = []
    for rows in probs:
        w = len(rows)
        out.append([math.fsum(rows[i][j] for i in range(w)) / w for j in range(prefix)])
    return out


def ref_pool(row: list, kernel: int, mode: str) -> list:
    """Spec 1.2 step 5: stride 1, padding ``kernel // 2``; max ignores the padding, avg counts it as 0."""
    if kernel <= 1:
        return list(row)
    half = kernel // 2
    size = len(row)
    out = []
    for j in range(size):
        inside = [row[t] for t in range(j - half, j + half + 1) if 0 <= t < size]
        out.append(max(inside) if mode == "max" else math.fsum(inside) / kernel)
    return out


def ref_group_reduce(rows: list, hkv: int, mode: str) -> list:
    """Spec 2: reduce the g query-head rows of each KV head (mean or max), position by position."""
    group = len(rows) // hkv
    out = []
    for kv in range(hkv):
        members = rows[kv * group : (kv + 1) * group]
        reduced = []
        for j in range(len(members[0])):
            column = [m[j] for m in members]
            reduced.append(max(column) if mode == "max" else math.fsum(column) / group)
        out.append(reduced)
    return out


def ref_snapkv(probs: list, hkv: int, prefix: int, kernel: int, pooling: str, gqa: str) -> list:
    """Spec 4 / 2 (SnapKV, PyramidKV, Ada-KV): window mean, then the GQA reduction, then pooling."""
    grouped = ref_group_reduce(ref_window_mean(probs, prefix), hkv, gqa)
    return [ref_pool(row, kernel, pooling) for row in grouped]


def ref_value_norm(values: list, prefix: int) -> list:
    """Spec 1.2 step 6: ``nu[kv] = max_{j < P} sum_d |v[kv][j][d]|`` (L1 norm, prefix only)."""
    return [max(math.fsum(abs(x) for x in values[kv][j]) for j in range(prefix)) for kv in range(len(values))]


def ref_normalised_entropy(scores: list) -> float:
    """Spec 1.2 step 8: ``-sum p log(p + eps) / log(Hkv * P)`` with ``p = S / (sum S + eps)``."""
    flat = [x for row in scores for x in row]
    if len(flat) <= 1:
        return 1.0
    total = math.fsum(flat) + ENTROPY_EPS
    entropy = -math.fsum((x / total) * math.log(x / total + ENTROPY_EPS) for x in flat)
    return entropy / math.log(len(flat))


def ref_lava(
    probs: list, values: list, prefix: int, kernel: int, pooling: str, gqa: str
) -> tuple[list, float]:
    """Spec 1.2: pool each query head, scale by its KV head's nu, reduce over the group; stat = entropy."""
    hkv = len(values)
    group = len(probs) // hkv
    nu = ref_value_norm(values, prefix)
    pooled = [ref_pool(row, kernel, pooling) for row in ref_window_mean(probs, prefix)]
    scaled = [[x * nu[h // group] for x in row] for h, row in enumerate(pooled)]
    scores = ref_group_reduce(scaled, hkv, gqa)
    return scores, ref_normalised_entropy(scores)


def ref_cake(
    probs: list, hkv: int, prefix: int, gamma: float, kernel: int, tau1: float, tau2: float
) -> tuple[list, float]:
    """Spec 4.5 (b), official CAKE.

    Token score ``mean_i A + gamma * var_i A`` (unbiased variance over the w window queries), avg-pooled
    (zero padding counted), then the mean over the GQA group. Preference ``disp^(1/tau1) * var^(1/tau2)``
    with ``disp = -sum A log(A + 1e-10)`` and ``var = sum Var_i(A)`` over all heads and prefix keys.
    """
    token_rows = []
    dispersion = 0.0
    variance_sum = 0.0
    for rows in probs:
        w = len(rows)
        token = []
        for j in range(prefix):
            column = [rows[i][j] for i in range(w)]
            mean = math.fsum(column) / w
            var = math.fsum((x - mean) ** 2 for x in column) / (w - 1)
            token.append(mean + gamma * var)
            variance_sum += var
            dispersion -= math.fsum(x * math.log(x + CAKE_LOG_EPS) for x in column)
        token_rows.append(ref_pool(token, kernel, "avg"))
    preference = dispersion ** (1.0 / tau1) * variance_sum ** (1.0 / tau2)
    return ref_group_reduce(token_rows, hkv, "mean"), preference


def ref_sink_recency(hkv: int, n: int, window: int, sinks: int) -> list:
    """Spec 4.6: the first ``sinks`` positions rank above everything, then recency (later = higher)."""
    prefix = n - window
    return [[float(n + 1) if j < sinks else float(j) for j in range(prefix)] for _ in range(hkv)]


def ref_top_positions(row: list, k: int) -> list[int]:
    """The k best positions of one head (ties to the lower position), sorted by position."""
    ranked = sorted(range(len(row)), key=lambda j: (-row[j], j))
    return sorted(ranked[:k])


def ref_kept(scores: list, caps: list[int], n: int, window: int) -> list[list[int]]:
    """Per head: its top-``cap`` prefix positions, then the ``window`` last positions."""
    return [
        ref_top_positions(row, cap) + list(range(n - window, n))
        for row, cap in zip(scores, caps, strict=True)
    ]


def to_lists(t: torch.Tensor) -> list:
    return t.double().tolist()


# ---------------------------------------------------------------------------------------------------------
# Random inputs: (Hq, Hkv, d, window, n, seed). GQA 9/3 and 8/2, MHA 4/4; n from window + 1 to 600.
# ---------------------------------------------------------------------------------------------------------

CASES = [
    (4, 4, 8, 8, 9, 0),  # MHA, P = 1 (n = window + 1)
    (9, 3, 8, 8, 11, 1),  # GQA g=3, P = 3 < kernel // 2 + 1
    (9, 3, 8, 16, 150, 2),
    (8, 2, 16, 32, 33, 3),  # GQA g=4, P = 1
    (8, 2, 8, 32, 600, 4),  # long prompt
    (4, 4, 16, 32, 97, 5),
    (9, 3, 16, 4, 300, 6),
]
GQA_CASES = [c for c in CASES if c[0] != c[1]]


def case_id(case) -> str:
    hq, hkv, d, w, n, seed = case
    return f"hq{hq}-hkv{hkv}-d{d}-w{w}-n{n}-s{seed}"


@functools.cache
def make_inputs(case):
    """Random post-RoPE queries (window only), keys, values and the loop-reference probabilities."""
    hq, hkv, d, w, n, seed = case
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(hq, w, d, generator=gen) * 1.5
    k = torch.randn(hkv, n, d, generator=gen)
    v = torch.randn(hkv, n, d, generator=gen) * torch.rand(hkv, 1, 1, generator=gen) * 3
    scaling = 1.0 / math.sqrt(d)
    probs = ref_window_attention(to_lists(q), to_lists(k), scaling)
    return q, k, v, scaling, probs


def lib_kept(scores: torch.Tensor, caps: list[int], n: int, window: int) -> list[list[int]]:
    """What the cache stores for these scores and per-head caps (the code path of ``compress_layer``)."""
    heads, positions = kept_entries(ranks_by_score(scores.float(), window), torch.tensor(caps))
    assert n == scores.shape[1] + window
    return [positions[heads == h].tolist() for h in range(scores.shape[0])]


def assert_scores_and_kept(lib: torch.Tensor, ref: list, n: int, window: int) -> None:
    hkv, prefix = len(ref), len(ref[0])
    assert tuple(lib.shape) == (hkv, prefix)
    assert lib.dtype == torch.float32
    torch.testing.assert_close(lib.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-12)
    for k in sorted({1, max(prefix // 4, 1), max(prefix // 2, 1), max(prefix - 1, 1), prefix}):
        caps = [k] * hkv
        assert lib_kept(lib, caps, n, window) == ref_kept(ref, caps, n, window), f"top-{k} differs"
    # uneven caps, as a flat head allocator produces them
    caps = [(prefix * (h + 1)) // (hkv + 1) for h in range(hkv)]
    assert lib_kept(lib, caps, n, window) == ref_kept(ref, caps, n, window)


# ---------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_window_attention_matches_loop_reference(case):
    q, k, _, scaling, probs = make_inputs(case)
    lib = window_attention(q, k, scaling)
    hq, _, _, w, n, _ = case
    assert lib.shape == (hq, w, n)
    torch.testing.assert_close(lib.double(), torch.tensor(probs, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    # the causal mask inside the window: query i (position n-w+i) gives exactly 0 to keys after it
    for i in range(w):
        assert torch.all(lib[:, i, n - w + i + 1 :] == 0)


SNAPKV_VARIANTS = [
    ("max", "mean", 7),
    ("avg", "mean", 7),
    ("max", "max", 7),
    ("avg", "max", 5),
    ("max", "mean", 1),
]


def _snapkv_params():
    out = []
    for case in CASES:
        for pooling, gqa, kernel in SNAPKV_VARIANTS:
            out.append(
                pytest.param(case, pooling, gqa, kernel, id=f"{case_id(case)}-{pooling}-{gqa}-k{kernel}")
            )
    return out


@pytest.mark.parametrize(("case", "pooling", "gqa", "kernel"), _snapkv_params())
def test_snapkv_scorer_matches_loop_reference(case, pooling, gqa, kernel):
    q, k, v, scaling, probs = make_inputs(case)
    _, hkv, _, w, n, _ = case
    result = SnapKVScorer(kernel=kernel, pooling=pooling, gqa=gqa)(q, k, v, w, scaling)
    assert result.stat is None
    assert_scores_and_kept(result.scores, ref_snapkv(probs, hkv, n - w, kernel, pooling, gqa), n, w)


LAVA_VARIANTS = [("max", "max", 7), ("avg", "max", 7), ("max", "mean", 5), ("max", "max", 1)]


@pytest.mark.parametrize(("pooling", "gqa", "kernel"), LAVA_VARIANTS, ids=lambda x: str(x))
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_lava_scorer_matches_loop_reference(case, pooling, gqa, kernel):
    q, k, v, scaling, probs = make_inputs(case)
    _, hkv, _, w, n, _ = case
    result = LavaScorer(kernel=kernel, pooling=pooling, gqa=gqa)(q, k, v, w, scaling)
    ref_scores, ref_stat = ref_lava(probs, to_lists(v), n - w, kernel, pooling, gqa)
    assert_scores_and_kept(result.scores, ref_scores, n, w)
    assert result.stat == pytest.approx(ref_stat, rel=1e-6, abs=1e-9)
    assert 0.0 <= result.stat <= 1.0 + 1e-9


@pytest.mark.parametrize("case", GQA_CASES[:3], ids=case_id)
def test_lava_value_norm_is_a_per_kv_head_prefix_constant(case):
    """nu depends only on the prefix values of its own KV head (spec 1.2 step 6, 6.6)."""
    q, k, v, scaling, _ = make_inputs(case)
    _, hkv, _, w, n, _ = case
    scorer = LavaScorer()
    base = scorer(q, k, v, w, scaling).scores
    scaled = v.clone()
    scaled[0] *= 4.0  # KV head 0 only
    scaled[1:, n - w :] *= 100.0  # window values of the other heads must not matter
    out = scorer(q, k, scaled, w, scaling).scores
    torch.testing.assert_close(out[0], base[0] * 4.0, rtol=1e-5, atol=0)
    torch.testing.assert_close(out[1:], base[1:], rtol=1e-6, atol=0)


CAKE_VARIANTS = [(200.0, 5, 1.6, 0.4), (200.0, 5, 1.0, 1.0), (50.0, 3, 0.8, 0.5)]


@pytest.mark.parametrize(("gamma", "kernel", "tau1", "tau2"), CAKE_VARIANTS, ids=lambda x: str(x))
@pytest.mark.parametrize("case", [c for c in CASES if c[3] > 1], ids=case_id)
def test_cake_scorer_matches_loop_reference(case, gamma, kernel, tau1, tau2):
    q, k, v, scaling, probs = make_inputs(case)
    _, hkv, _, w, n, _ = case
    result = CakeScorer(gamma=gamma, kernel=kernel, pooling="avg", tau1=tau1, tau2=tau2)(q, k, v, w, scaling)
    ref_scores, ref_pref = ref_cake(probs, hkv, n - w, gamma, kernel, tau1, tau2)
    assert_scores_and_kept(result.scores, ref_scores, n, w)
    assert result.stat == pytest.approx(ref_pref, rel=1e-5)


def test_cake_temperatures_resolved_from_model_table():
    """bind() fills unset temperatures from CAKE's model2tau table (nearest budget), (1, 1) otherwise."""
    scorer = CakeScorer()
    scorer.bind("llama-3.1-8b-instruct", 128)
    assert (scorer.tau1, scorer.tau2) == (1.6, 0.6)
    scorer = CakeScorer()
    scorer.bind("qwen2.5-7b-instruct", 900)
    assert (scorer.tau1, scorer.tau2) == (1.5, 0.6)
    scorer = CakeScorer(tau1=0.3)
    scorer.bind("llama-3.1-8b-instruct", 1024)
    assert (scorer.tau1, scorer.tau2) == (0.3, 0.4)  # an explicit value wins
    assert tau_for("no-such-model", 128) == (1.0, 1.0)
    # and the bound temperatures are the ones the preference uses
    q, k, v, scaling, probs = make_inputs(CASES[2])
    _, hkv, _, w, n, _ = CASES[2]
    bound = CakeScorer()
    bound.bind("llama-3.1-8b-instruct", 1000)
    _, ref_pref = ref_cake(probs, hkv, n - w, 200.0, 5, 1.6, 0.4)
    assert bound(q, k, v, w, scaling).stat == pytest.approx(ref_pref, rel=1e-5)


@pytest.mark.parametrize("sinks", [0, 4, 40])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sink_recency_scorer_matches_reference(case, sinks):
    q, k, v, scaling, _ = make_inputs(case)
    _, hkv, _, w, n, _ = case
    result = SinkRecencyScorer(sinks=sinks)(q, k, v, w, scaling)
    ref = ref_sink_recency(hkv, n, w, sinks)
    assert_scores_and_kept(result.scores, ref, n, w)
    # StreamingLLM: keeping B0 - w prefix entries = the first min(sinks, .) tokens + the most recent ones
    prefix = n - w
    keep = max(prefix // 2, 1)
    expected = sorted(set(range(min(sinks, keep))) | set(range(prefix - (keep - min(sinks, keep)), prefix)))
    assert lib_kept(result.scores, [keep] * hkv, n, w)[0][:keep] == expected


def test_cake_scorer_single_window_query_is_not_nan():
    from lava.errors import UserError

    q, k, v, scaling, _ = make_inputs(CASES[2])
    try:
        result = CakeScorer(tau1=1.0, tau2=1.0)(q[:, -1:], k, v, 1, scaling)
    except (UserError, ValueError):
        return  # a clear refusal is fine too
    assert torch.isfinite(result.scores).all() and math.isfinite(result.stat)
