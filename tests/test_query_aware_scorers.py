"""H2O and expected attention (scorers that read every prompt query) against loop references of their definitions.

The references are written from the definitions in docs/methods.md (kvpress's ObservedAttentionPress
and ExpectedAttentionPress) on nested lists with ``math`` only: one loop per head, query and key,
rotations built as explicit 2x2 blocks per position and averaged entry by entry. They share no code
path with the vectorised scorers. The tests compare scores and kept sets on random GQA and MHA
inputs, check hand-computed values, check what each score depends on (and what it must ignore),
check the de-rotation of post-RoPE queries against the pre-RoPE queries of tiny random models
(Llama, Llama with YaRN, Qwen3 with q/k norms, Gemma 3's global layers), show that broken variants
of the definitions and of the code are rejected, and run the configs through a single run's cache.
The capture and scoring interface (how many queries a scorer reads) is checked at the end.
"""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_reference_scorers import lib_kept, ref_kept  # sibling test module

from eval.method_configs import method_node
from lava.errors import UserError
from lava.method import CompressionMethod
from lava.policy import queries_read, score_layer
from lava.prefill import PrefillCapture, capture_prefill, capture_queries
from lava.scorers import ExpectedAttentionScorer, H2OScorer, SnapKVScorer, TovaScorer
from lava.scorers.rotary import Rotary, rotary_of

# ---------------------------------------------------------------------------------------------------------
# Loop references (from the definitions).
# ---------------------------------------------------------------------------------------------------------


def _dot(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def _softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = math.fsum(exps)
    return [e / total for e in exps]


def ref_h2o(queries: list, keys: list, scaling: float, window: int, normalize: bool = True) -> list:
    """``score[kv][j] = mean_{h in kv} (1/(n-j)) sum_{i >= j} softmax_{t <= i}(q[h][i] . k[kv][t] s)[j]``.

    ``queries[h]`` holds all ``n`` prompt queries of head ``h``; without ``normalize`` the sum is
    not divided by ``n - j``.
    """
    hq, hkv, n = len(queries), len(keys), len(keys[0])
    group = hq // hkv
    out = []
    for kv in range(hkv):
        total = [0.0] * n
        for h in range(kv * group, (kv + 1) * group):
            for i in range(n):
                probs = _softmax([_dot(queries[h][i], keys[kv][t]) * scaling for t in range(i + 1)])
                for j in range(i + 1):
                    seen = n - j if normalize else 1
                    total[j] += probs[j] / seen / group
        out.append(total[: n - window])
    return out


def ref_rotation(position: int, inv_freq: list[float], factor: float) -> list:
    """The (d, d) RoPE matrix at ``position``: channel pairs (c, c + d/2) rotated by ``position * f_c``."""
    half = len(inv_freq)
    d = 2 * half
    rot = [[0.0] * d for _ in range(d)]
    for c, f in enumerate(inv_freq):
        angle = position * f
        cos, sin = math.cos(angle) * factor, math.sin(angle) * factor
        rot[c][c], rot[c][c + half] = cos, -sin
        rot[c + half][c], rot[c + half][c + half] = sin, cos
    return rot


def ref_matvec(mat: list, vec: list) -> list:
    return [_dot(row, vec) for row in mat]


def ref_rotate_queries(pre: list, inv_freq: list[float], factor: float) -> list:
    """Post-RoPE queries: ``pre[h][i]`` rotated at position ``i``."""
    rots = [ref_rotation(i, inv_freq, factor) for i in range(len(pre[0]))]
    return [[ref_matvec(rots[i], row) for i, row in enumerate(head)] for head in pre]


def ref_expected_attention(
    pre: list,
    keys: list,
    values: list,
    inv_freq: list[float],
    factor: float,
    scaling: float,
    window: int,
    n_future: int = 512,
    n_sink: int = 4,
    use_covariance: bool = True,
    use_vnorm: bool = True,
    epsilon: float = 0.0,
    recent: int | None = None,
) -> list:
    """Expected attention from the definition, on the **pre-RoPE** queries ``pre[h][i]`` (i < n).

    Mean and covariance (divided by the count) of the queries at positions ``first..n-1``; the
    rotation matrices of positions ``n..n+T-1`` averaged entry by entry; ``mu' = R mu``,
    ``S' = R S R^T``; logits ``s mu'.k + s^2/2 k S' k`` over the keys from ``n_sink`` on, softmax,
    group mean, times ``||v||`` (after ``+ epsilon``); the sinks get the largest score plus one.
    """
    hq, hkv, n, d = len(pre), len(keys), len(keys[0]), len(keys[0][0])
    group = hq // hkv
    sinks = min(n_sink, n)
    first = max(sinks, 0 if recent is None else n - recent)
    rows = list(range(first, n))
    mean_rot = [[0.0] * d for _ in range(d)]
    for t in range(n, n + n_future):
        rot = ref_rotation(t, inv_freq, factor)
        for a in range(d):
            for b in range(d):
                mean_rot[a][b] += rot[a][b] / n_future
    per_head = []
    for h in range(hq):
        mu = [math.fsum(pre[h][i][c] for i in rows) / len(rows) for c in range(d)]
        cov = [
            [
                math.fsum((pre[h][i][a] - mu[a]) * (pre[h][i][b] - mu[b]) for i in rows) / len(rows)
                for b in range(d)
            ]
            for a in range(d)
        ]
        mu_r = ref_matvec(mean_rot, mu)
        # S' = R S R^T, entry by entry
        cov_r = [
            [
                math.fsum(mean_rot[a][x] * cov[x][y] * mean_rot[b][y] for x in range(d) for y in range(d))
                for b in range(d)
            ]
            for a in range(d)
        ]
        kv = h // group
        logits = []
        for j in range(sinks, n):
            k = keys[kv][j]
            value = scaling * _dot(mu_r, k)
            if use_covariance:
                value += scaling**2 / 2 * _dot(k, ref_matvec(cov_r, k))
            logits.append(value)
        per_head.append(_softmax(logits))
    scores = []
    for kv in range(hkv):
        row = []
        for j in range(sinks, n):
            mean = math.fsum(per_head[h][j - sinks] for h in range(kv * group, (kv + 1) * group)) / group
            if use_vnorm:
                mean = (mean + epsilon) * math.sqrt(_dot(values[kv][j], values[kv][j]))
            row.append(mean)
        scores.append(row)
    top = max(max(row) for row in scores) + 1
    return [([top] * sinks + row)[: n - window] for row in scores]


def to_lists(t: torch.Tensor) -> list:
    return t.double().tolist()


# ---------------------------------------------------------------------------------------------------------
# Random inputs: (Hq, Hkv, d, window, n, seed).
# ---------------------------------------------------------------------------------------------------------

CASES = [
    (6, 2, 8, 4, 50, 0),  # GQA g=3
    (6, 3, 8, 1, 40, 2),  # GQA g=2, window 1 (the kvpress-nearest switch)
    (8, 2, 8, 32, 33, 3),  # GQA g=4, P = 1
    (4, 4, 16, 8, 90, 4),  # MHA
]


def case_id(case) -> str:
    hq, hkv, d, w, n, seed = case
    return f"hq{hq}-hkv{hkv}-d{d}-w{w}-n{n}-s{seed}"


def inv_freq_for(d: int, base: float = 100.0) -> list[float]:
    """RoPE frequencies ``base^(-2c/d)``; a small base makes every pair turn within the prompt."""
    return [base ** (-2 * c / d) for c in range(d // 2)]


def make_inputs(case, factor: float = 1.0):
    """Random pre-RoPE queries (with a shared offset, so their mean matters), their post-RoPE rotation
    (float64 loop reference), keys with per-position scales and values.

    Returns post (Hq, n, d) fp32, keys, values, scaling, the pre-RoPE lists and the frequencies."""
    hq, hkv, d, w, n, seed = case
    gen = torch.Generator().manual_seed(seed)
    pre = torch.randn(hq, n, d, generator=gen, dtype=torch.float64) * 0.8 + torch.randn(
        hq, 1, d, generator=gen, dtype=torch.float64
    )
    k = torch.randn(hkv, n, d, generator=gen) * (0.5 + torch.rand(hkv, n, 1, generator=gen))
    v = torch.randn(hkv, n, d, generator=gen) * (0.5 + torch.rand(hkv, n, 1, generator=gen))
    freqs = inv_freq_for(d)
    post = torch.tensor(ref_rotate_queries(pre.tolist(), freqs, factor), dtype=torch.float32)
    return post, k, v, 1.0 / math.sqrt(d), pre.tolist(), freqs


def bound(freqs: list[float], factor: float = 1.0, **params) -> ExpectedAttentionScorer:
    scorer = ExpectedAttentionScorer(**params)
    scorer.bind_model(Rotary(torch.tensor(freqs, dtype=torch.float32), factor))
    return scorer


def assert_scores_and_kept(lib: torch.Tensor, ref: list, n: int, window: int, rtol: float = 1e-5) -> None:
    """fp32 scores close to the float64 reference, and the same kept sets for several per-head caps."""
    hkv, prefix = len(ref), len(ref[0])
    assert tuple(lib.shape) == (hkv, prefix)
    assert lib.dtype == torch.float32
    torch.testing.assert_close(lib.double(), torch.tensor(ref, dtype=torch.float64), rtol=rtol, atol=1e-12)
    for k in sorted({1, max(prefix // 4, 1), max(prefix // 2, 1), max(prefix - 1, 1), prefix}):
        assert lib_kept(lib, [k] * hkv, n, window) == ref_kept(ref, [k] * hkv, n, window), f"top-{k} differs"
    caps = [(prefix * (h + 1)) // (hkv + 1) for h in range(hkv)]  # uneven, as a flat head allocator gives
    assert lib_kept(lib, caps, n, window) == ref_kept(ref, caps, n, window)


# ---------------------------------------------------------------------------------------------------------
# Against the loop references
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_h2o_matches_loop_reference(case, normalize):
    post, k, v, scaling, _, _ = make_inputs(case)
    w, n = case[3], case[4]
    result = H2OScorer(normalize=normalize)(post, k, v, w, scaling)
    assert result.stat is None
    ref = ref_h2o(to_lists(post), to_lists(k), scaling, w, normalize)
    assert_scores_and_kept(result.scores, ref, n, w)


EA_VARIANTS = [
    {},  # kvpress's defaults
    {"use_covariance": False},
    {"use_vnorm": False},
    {"epsilon": 0.01, "n_sink": 0},
    {"n_future_positions": 1, "n_sink": 7},
    {"recent": 12},
]


@pytest.mark.parametrize(
    "params", EA_VARIANTS, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()) or "default"
)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_expected_attention_matches_loop_reference(case, params):
    """The scorer takes post-RoPE queries and de-rotates them; the reference starts from the pre-RoPE ones."""
    post, k, v, scaling, pre, freqs = make_inputs(case)
    w, n = case[3], case[4]
    recent = params.get("recent")
    window_queries = post if recent is None else post[:, -recent:]
    result = bound(freqs, **params)(window_queries, k, v, w, scaling)
    assert result.stat is None
    ref = ref_expected_attention(pre, to_lists(k), to_lists(v), freqs, 1.0, scaling, w, **_ref_params(params))
    assert_scores_and_kept(result.scores, ref, n, w, rtol=2e-5)


def _ref_params(params: dict) -> dict:
    names = {"n_future_positions": "n_future"}
    return {names.get(key, key): value for key, value in params.items()}


def test_expected_attention_with_a_rotation_factor():
    """YaRN-style RoPE scales the cosines and sines by a factor: the de-rotation divides it out (twice)
    and the average future rotation carries it once, as the model's own rotation does."""
    case = (6, 2, 8, 4, 50, 0)
    post, k, v, scaling, pre, freqs = make_inputs(case, factor=1.3)
    result = bound(freqs, 1.3)(post, k, v, 4, scaling)
    ref = ref_expected_attention(pre, to_lists(k), to_lists(v), freqs, 1.3, scaling, 4)
    assert_scores_and_kept(result.scores, ref, 50, 4, rtol=2e-5)


def test_h2o_chunking_does_not_change_scores(monkeypatch):
    """One query per chunk and one chunk for all give the same scores (the chunk bounds memory only)."""
    import lava.scorers.h2o as h2o

    post, k, v, scaling, _, _ = make_inputs((6, 2, 8, 4, 50, 0))
    whole = H2OScorer()(post, k, v, 4, scaling).scores
    monkeypatch.setattr(h2o, "CHUNK_ELEMENTS", 1)
    torch.testing.assert_close(H2OScorer()(post, k, v, 4, scaling).scores, whole, rtol=1e-6, atol=1e-9)
    monkeypatch.setattr(h2o, "CHUNK_ELEMENTS", 6 * 50 * 7)  # 7 queries per chunk: a ragged last chunk
    torch.testing.assert_close(H2OScorer()(post, k, v, 4, scaling).scores, whole, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------------------


def test_h2o_hand_values_and_the_normalisation():
    """d = 1, scaling 1, every query 1, keys 0, ln 3, 0. Query 0 sees key 0 alone: (1); query 1:
    (1, 3)/4; query 2: (1, 3, 1)/5. Received: 1 + 1/4 + 1/5 = 29/20, 3/4 + 3/5 = 27/20, 1/5; seen by
    3, 2, 1 queries: 29/60, 27/40, 1/5. Window 1 scores the first two. The plain sum keeps position 0
    first, the mean position 1."""
    keys = torch.tensor([[[0.0], [math.log(3.0)], [0.0]]])
    q = torch.ones(1, 3, 1)
    mean = H2OScorer()(q, keys, torch.zeros_like(keys), 1, 1.0).scores
    total = H2OScorer(normalize=False)(q, keys, torch.zeros_like(keys), 1, 1.0).scores
    torch.testing.assert_close(mean.double(), _row([29 / 60, 27 / 40]), rtol=1e-6, atol=0)
    torch.testing.assert_close(total.double(), _row([29 / 20, 27 / 20]), rtol=1e-6, atol=0)
    assert lib_kept(mean, [1], 3, 1) == [[1, 2]]
    assert lib_kept(total, [1], 3, 1) == [[0, 2]]
    # GQA: a second query head of the group with query 0 spreads evenly: (1), (1/2, 1/2), (1/3, 1/3, 1/3)
    # -> received 11/6, 5/6, 1/3; seen by 3, 2: 11/18, 5/12. The group mean: (29/60 + 11/18)/2, (27/40 + 5/12)/2
    q2 = torch.tensor([[[1.0], [1.0], [1.0]], [[0.0], [0.0], [0.0]]])
    grouped = H2OScorer()(q2, keys, torch.zeros_like(keys), 1, 1.0).scores
    expected = [(29 / 60 + 11 / 18) / 2, (27 / 40 + 5 / 12) / 2]
    torch.testing.assert_close(grouped.double(), _row(expected), rtol=1e-6, atol=0)


def _row(values: list[float]) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float64)


def _quarter_turn() -> Rotary:
    """One channel pair turning a quarter per position (d = 2)."""
    return Rotary(torch.tensor([math.pi / 2]))


def test_expected_attention_hand_values_de_rotation_and_future_rotation():
    """d = 2, a pair turning pi/2 per position, scaling 1, no sinks, no covariance, no value norm.

    The post-RoPE queries (1,0), (0,1), (-1,0), (0,-1) at positions 0..3 are all (1,0) before RoPE (a
    scorer that skipped the de-rotation would see mean 0 and uniform attention). n = 4: the future
    positions 4 and 5 turn by 2 pi (identity) and 5 pi/2 (a quarter), so with T = 2 the mean rotation
    is (I + R90)/2 and mu' = (1/2, 1/2). Keys (2 ln 2, 0), (0, 2 ln 3), (0, 0), window (0, 0): logits
    ln 2, ln 3, 0, 0 -> (2, 3, 1, 1)/7. With T = 1 (identity): logits 2 ln 2, 0, 0, 0 -> (4, 1, 1, 1)/7.
    """
    post = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]])
    keys = torch.tensor([[[2 * math.log(2.0), 0.0], [0.0, 2 * math.log(3.0)], [0.0, 0.0], [0.0, 0.0]]])
    values = torch.zeros_like(keys)
    params = {"n_sink": 0, "use_covariance": False, "use_vnorm": False}
    two = ExpectedAttentionScorer(n_future_positions=2, **params)
    two.bind_model(_quarter_turn())
    one = ExpectedAttentionScorer(n_future_positions=1, **params)
    one.bind_model(_quarter_turn())
    # cos(2 pi) and the quarter turns are exact only up to fp32 rounding of the angles
    tolerance = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(
        two(post, keys, values, 1, 1.0).scores.double(), _row([2 / 7, 3 / 7, 1 / 7]), **tolerance
    )
    torch.testing.assert_close(
        one(post, keys, values, 1, 1.0).scores.double(), _row([4 / 7, 1 / 7, 1 / 7]), **tolerance
    )


def test_expected_attention_hand_values_covariance_vnorm_and_sinks():
    """No rotation (frequency 0), scaling 1. Pre-RoPE queries (1, 1), (1, -1): mean (1, 0), covariance
    diag(0, 1) (divided by the count 2; the unbiased estimate would be diag(0, 2)). Logits
    ``k_x + k_y^2 / 2``: keys (0, 0), (0, sqrt(2 ln 2)), (ln 3, 0), window (0, 0) give 0, ln 2, ln 3, 0
    -> (1, 2, 3, 1)/7. Value norms 1, 2, 3, 1: scores 1/7, 4/7, 9/7. With ``epsilon = 1``: (8, 18, 30)/7.
    With one sink: the softmax runs over keys 1..3, (2, 3, 1)/6, times norms -> 4/6, 9/6; the sink
    gets the largest (9/6, the window's 1/6 is smaller) plus 1."""
    flat = Rotary(torch.tensor([0.0]))
    post = torch.tensor([[[1.0, 1.0], [1.0, -1.0]]])  # the last two queries (positions 2, 3)
    keys = torch.tensor([[[0.0, 0.0], [0.0, math.sqrt(2 * math.log(2.0))], [math.log(3.0), 0.0], [0.0, 0.0]]])
    values = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, -1.0]]])

    def score(**params):
        scorer = ExpectedAttentionScorer(n_future_positions=3, recent=2, **params)
        scorer.bind_model(flat)
        return scorer(post, keys, values, 1, 1.0).scores.double()

    tolerance = {"rtol": 1e-6, "atol": 0}
    torch.testing.assert_close(score(n_sink=0, use_vnorm=False), _row([1 / 7, 2 / 7, 3 / 7]), **tolerance)
    torch.testing.assert_close(score(n_sink=0), _row([1 / 7, 4 / 7, 9 / 7]), **tolerance)
    torch.testing.assert_close(score(n_sink=0, epsilon=1.0), _row([8 / 7, 18 / 7, 30 / 7]), **tolerance)
    torch.testing.assert_close(score(n_sink=1), _row([9 / 6 + 1, 4 / 6, 9 / 6]), **tolerance)


# ---------------------------------------------------------------------------------------------------------
# What each score depends on
# ---------------------------------------------------------------------------------------------------------

DEP_CASE = (6, 2, 8, 4, 50, 0)


def test_h2o_query_i_moves_only_the_keys_it_sees_and_values_do_not_count():
    post, k, v, scaling, _, _ = make_inputs(DEP_CASE)
    base = H2OScorer()(post, k, v, 4, scaling).scores
    moved = post.clone()
    moved[4, 30] *= -3.0  # query head 4 (KV head 1) at position 30
    out = H2OScorer()(moved, k, torch.randn(v.shape), 4, scaling).scores
    torch.testing.assert_close(out[:, 31:], base[:, 31:], rtol=0, atol=0)  # keys after 30: unseen by it
    torch.testing.assert_close(out[0], base[0], rtol=0, atol=0)  # the other group
    assert not torch.allclose(out[1, :31], base[1, :31])


def test_h2o_gqa_is_the_group_mean_of_the_heads_scores():
    """With GQA, the score of KV head kv is the mean over its query heads of the one-head scores."""
    post, k, v, scaling, _, _ = make_inputs(DEP_CASE)
    grouped = H2OScorer()(post, k, v, 4, scaling).scores
    single = torch.stack(
        [H2OScorer()(post[h : h + 1], k[h // 3 : h // 3 + 1], v[:1], 4, scaling).scores[0] for h in range(6)]
    )
    torch.testing.assert_close(grouped, single.view(2, 3, -1).mean(dim=1), rtol=1e-6, atol=1e-9)


def _expected(post, k, v, scaling, freqs, **params):
    return bound(freqs, **params)(post, k, v, 4, scaling).scores


def test_expected_attention_ignores_sink_queries_and_query_order():
    """Only the distribution of the pre-RoPE queries after the sinks counts: changing the sink queries
    changes nothing, and moving the pre-RoPE queries to other positions (re-rotated there) neither;
    without the de-rotation the second would not hold."""
    post, k, v, scaling, pre, freqs = make_inputs(DEP_CASE)
    base = _expected(post, k, v, scaling, freqs)
    sinks = post.clone()
    sinks[:, :4] = torch.randn(6, 4, 8) * 5
    torch.testing.assert_close(_expected(sinks, k, v, scaling, freqs), base, rtol=0, atol=0)
    order = [0, 1, 2, 3] + (torch.randperm(46, generator=torch.Generator().manual_seed(1)) + 4).tolist()
    shuffled = [[head[i] for i in order] for head in pre]
    moved = torch.tensor(ref_rotate_queries(shuffled, freqs, 1.0), dtype=torch.float32)
    assert not torch.allclose(moved, post)
    torch.testing.assert_close(_expected(moved, k, v, scaling, freqs), base, rtol=2e-5, atol=1e-9)


def test_expected_attention_values_enter_through_their_norm_only():
    post, k, v, scaling, _, freqs = make_inputs(DEP_CASE)
    base = _expected(post, k, v, scaling, freqs)
    flipped = -v.flip(-1)  # the same norms, other vectors
    torch.testing.assert_close(_expected(post, k, flipped, scaling, freqs), base, rtol=1e-6, atol=0)
    plain = _expected(post, k, v, scaling, freqs, use_vnorm=False)
    torch.testing.assert_close(
        _expected(post, k, torch.randn(v.shape), scaling, freqs, use_vnorm=False), plain
    )
    doubled = v.clone()
    doubled[1, 20] *= 2.0
    out = _expected(post, k, doubled, scaling, freqs)
    assert out[1, 20] == pytest.approx(2 * float(base[1, 20]), rel=1e-6)
    assert torch.equal(out[0, 4:], base[0, 4:])  # (the sinks follow the layer's largest score)


def test_expected_attention_sinks_rank_first_in_every_head():
    post, k, v, scaling, _, freqs = make_inputs(DEP_CASE)
    scores = _expected(post, k, v, scaling, freqs, n_sink=5)
    assert torch.all(scores[:, :5] == scores[:, :1])
    assert float(scores[:, :5].min()) > float(scores[:, 5:].max()) + 0.999  # the largest score + 1
    for cap in (1, 5):
        assert all(row[:cap] == list(range(cap)) for row in lib_kept(scores, [cap, cap], 50, 4))


def test_expected_attention_depends_on_the_future_horizon_and_recent_on_the_last_queries():
    post, k, v, scaling, _, freqs = make_inputs(DEP_CASE)
    base = _expected(post, k, v, scaling, freqs)
    assert not torch.allclose(_expected(post, k, v, scaling, freqs, n_future_positions=16), base)
    last = bound(freqs, recent=10)
    assert last.queries_needed(4) == 10
    recent = last(post[:, -10:], k, v, 4, scaling).scores
    older = post.clone()
    older[:, :40] = torch.randn(6, 40, 8)
    torch.testing.assert_close(last(older[:, -10:], k, v, 4, scaling).scores, recent, rtol=0, atol=0)
    assert not torch.allclose(recent, base)


# ---------------------------------------------------------------------------------------------------------
# Broken variants are rejected
# ---------------------------------------------------------------------------------------------------------


def test_broken_references_are_rejected():
    """Each mutation of the definitions (non-causal or unnormalised H2O; unbiased covariance, no future
    rotation, sinks not protected for expected attention) fails the comparison the tests above make."""
    post, k, v, scaling, pre, freqs = make_inputs(DEP_CASE)
    qs, ks, vs = to_lists(post), to_lists(k), to_lists(v)
    h2o = H2OScorer()(post, k, v, 4, scaling).scores
    hkv, n = 2, 50

    def non_causal():
        out = []
        for kv in range(hkv):
            total = [0.0] * n
            for h in range(kv * 3, kv * 3 + 3):
                for i in range(n):
                    probs = _softmax([_dot(qs[h][i], ks[kv][t]) * scaling for t in range(n)])
                    for j in range(n):
                        total[j] += probs[j] / n / 3
            out.append(total[: n - 4])
        return out

    for broken in (non_causal(), ref_h2o(qs, ks, scaling, 4, normalize=False)):
        with pytest.raises(AssertionError):
            assert_scores_and_kept(h2o, broken, n, 4)
    expected = _expected(post, k, v, scaling, freqs)
    unbiased = []  # the same mean, deviations grown by sqrt(m / (m - 1)): the covariance divided by m - 1
    for head in pre:
        mu = [math.fsum(row[c] for row in head[4:]) / 46 for c in range(8)]
        unbiased.append([[m + (x - m) * math.sqrt(46 / 45) for x, m in zip(row, mu)] for row in head])
    no_future = ref_expected_attention(pre, ks, vs, freqs, 1.0, scaling, 4, n_future=1)
    for broken in (
        ref_expected_attention(unbiased, ks, vs, freqs, 1.0, scaling, 4),
        no_future,
        ref_expected_attention(pre, ks, vs, freqs, 1.0, scaling, 4, n_sink=0),
        ref_expected_attention(qs, ks, vs, freqs, 1.0, scaling, 4),  # post-RoPE statistics
    ):
        with pytest.raises(AssertionError):
            assert_scores_and_kept(expected, broken, n, 4, rtol=2e-5)


def test_broken_rotations_in_the_code_are_rejected(monkeypatch):
    """Statistics on the post-RoPE queries (no de-rotation) or no averaging over the future positions
    make the scorer disagree with the reference."""
    post, k, v, scaling, pre, freqs = make_inputs(DEP_CASE)
    ref = ref_expected_attention(pre, to_lists(k), to_lists(v), freqs, 1.0, scaling, 4)
    assert_scores_and_kept(_expected(post, k, v, scaling, freqs), ref, 50, 4, rtol=2e-5)
    for name, broken in (
        ("unrotate", lambda self, x, positions: x.float()),
        ("mean_rotation", lambda self, positions: torch.eye(8, device=positions.device)),
    ):
        with monkeypatch.context() as patch:
            patch.setattr(Rotary, name, broken)
            with pytest.raises(AssertionError):
                assert_scores_and_kept(_expected(post, k, v, scaling, freqs), ref, 50, 4, rtol=2e-5)


# ---------------------------------------------------------------------------------------------------------
# The de-rotation against the models' own pre-RoPE queries
# ---------------------------------------------------------------------------------------------------------

FAMILY_COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    vocab_size=128,
    num_hidden_layers=2,
    max_position_embeddings=256,
    initializer_range=0.1,
)


def family_model(family: str):
    import transformers as tf

    if family == "llama":
        config = tf.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, head_dim=16, **FAMILY_COMMON)
    elif family == "llama-yarn":  # attention_scaling = 0.1 ln 4 + 1
        rope = {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_theta": 500.0,
        }
        config = tf.LlamaConfig(
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_parameters=rope, **FAMILY_COMMON
        )
    elif family == "qwen3":
        config = tf.Qwen3Config(num_attention_heads=6, num_key_value_heads=3, head_dim=8, **FAMILY_COMMON)
    elif family == "gemma3":  # layer 1 global (theta 1e6), layer 0 local (theta 1e4)
        config = tf.Gemma3TextConfig(
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            **FAMILY_COMMON,
        )
    else:
        raise ValueError(family)
    torch.manual_seed(3)
    return tf.AutoModelForCausalLM.from_config(config).eval()


RECORDED_QUERIES: dict[
    int, torch.Tensor
] = {}  # layer index -> (Hq, n, d) post-RoPE queries of the last forward


def record_queries(module, query, key, value, attention_mask, **kwargs):
    """An attention function (registered once per process) that keeps the post-RoPE queries, then runs SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    RECORDED_QUERIES[module.layer_idx] = query[0].clone()
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


@torch.no_grad()
@pytest.mark.parametrize("family", ["llama", "llama-yarn", "qwen3", "gemma3"])
def test_unrotate_recovers_the_models_pre_rope_queries(family):
    """The pre-RoPE queries (q_proj, then q_norm where the family has one) read by forward hooks equal
    ``rotary_of(model).unrotate`` of the post-RoPE queries the attention function receives, at every
    global layer; rotating them back gives the post-RoPE queries."""
    from lava.attention import register_attention

    model = family_model(family)
    seen_pre, seen_post = {}, RECORDED_QUERIES
    seen_post.clear()
    register_attention("lava_test_record_queries", record_queries)
    model.set_attn_implementation("lava_test_record_queries")
    n = 60
    hooks = []
    for index, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        source = getattr(attn, "q_norm", None) or attn.q_proj

        def keep(module, args, out, index=index, head_dim=attn.head_dim):
            # q_proj gives (n, Hq d); Qwen3's q_norm (n, Hq, d), Gemma 3's (Hq, n, d)
            pre = out[0] if out.dim() == 4 else out[0].reshape(n, -1, head_dim)
            seen_pre[index] = (pre.transpose(0, 1) if pre.shape[0] == n else pre).clone()

        hooks.append(source.register_forward_hook(keep))
    ids = torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(0))
    try:
        model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    rotary = rotary_of(model)
    theta = {"llama": 10000.0, "llama-yarn": 500.0, "qwen3": 10000.0, "gemma3": 1_000_000.0}[family]
    if family != "llama-yarn":  # YaRN also reshapes the frequencies; its factor is checked instead
        d = seen_post[0].shape[-1]
        expected = torch.tensor([theta ** (-2 * c / d) for c in range(d // 2)])
        torch.testing.assert_close(rotary.inv_freq, expected, rtol=1e-6, atol=0)
    else:
        assert rotary.attention_scaling == pytest.approx(0.1 * math.log(4.0) + 1.0)
    layer_types = getattr(model.config, "layer_types", None) or ["full_attention"] * 2
    positions = torch.arange(n)
    checked = 0
    for index, kind in enumerate(layer_types):
        if kind != "full_attention":
            continue
        torch.testing.assert_close(
            rotary.unrotate(seen_post[index], positions), seen_pre[index], rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(
            rotary.rotate(seen_pre[index], positions), seen_post[index], rtol=1e-4, atol=1e-5
        )
        checked += 1
    assert checked >= 1
    if family == "gemma3":  # the local layer turns at other frequencies: the global rotary does not undo it
        assert not torch.allclose(rotary.unrotate(seen_post[0], positions), seen_pre[0], atol=1e-3)


def test_rotary_refusals():
    with pytest.raises(UserError, match="rotary position embedding"):
        ExpectedAttentionScorer().bind_model(None)
    with pytest.raises(UserError, match="dynamic"):
        ExpectedAttentionScorer().bind_model(Rotary(torch.ones(4), rope_type="dynamic"))
    partial = ExpectedAttentionScorer()
    partial.bind_model(Rotary(torch.ones(2)))  # covers 4 channels of 8
    q, k = torch.randn(2, 10, 8), torch.randn(1, 10, 8)
    with pytest.raises(UserError, match="4 of 8 head channels"):
        partial(q, k, k, 2, 0.3)
    with pytest.raises(RuntimeError, match="not bound"):
        ExpectedAttentionScorer()(q, k, k, 2, 0.3)
    with pytest.raises(UserError, match="n_future_positions"):
        ExpectedAttentionScorer(n_future_positions=0)


# ---------------------------------------------------------------------------------------------------------
# The configs through a single run's cache
# ---------------------------------------------------------------------------------------------------------

NAMES = ["h2o", "expected_attention", "adakv_expected_attention"]


def build(name: str, budget: int, **overrides) -> CompressionMethod:
    root = OmegaConf.create({"budget": budget, "model": {"name": "tiny-random"}})
    root.method = method_node(name)
    for key, value in overrides.items():
        OmegaConf.update(root, f"method.{key}", value)
    return instantiate(root.method)


@pytest.mark.parametrize("name", NAMES)
def test_configs_build_their_scorer_with_kvpress_defaults(name):
    method = build(name, 64)
    assert method.window == 32 and method.budget == 64
    assert type(method.layer_allocator).__name__ == "UniformLayerBudget"
    head = type(method.head_allocator).__name__
    assert head == ("FlatHeadBudget" if name.startswith("adakv") else "UniformHeadBudget")
    if name == "h2o":
        assert method.scorer == H2OScorer(normalize=True)
    else:
        assert method.scorer == ExpectedAttentionScorer(512, 4, True, True, 0.0, None)
        assert method.describe()["scorer"] == {
            "class": "ExpectedAttentionScorer",
            "n_future_positions": 512,
            "n_sink": 4,
            "use_covariance": True,
            "use_vnorm": True,
            "epsilon": 0.0,
            "recent": None,
        }
    assert queries_read(method) is None
    assert build(name, 64, window=1).window == 1  # the kvpress-nearest switch


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=48,
        intermediate_size=64,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
        num_hidden_layers=3,
        vocab_size=96,
        max_position_embeddings=256,
        initializer_range=0.2,
        rope_theta=100.0,  # fast turns: the de-rotation matters within the prompt
    )
    torch.manual_seed(7)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    return model


@torch.no_grad()
@pytest.mark.parametrize("window", [32, 1])
@pytest.mark.parametrize("name", NAMES)
def test_single_run_keeps_the_reference_top_entries(tiny_model, name, window):
    """A single run keeps, per layer and KV head, the top entries of the loop reference, computed on the
    model's own pre-RoPE queries (q_proj hooks) and the frequencies from rope_theta (expected
    attention), or on the captured post-RoPE queries (H2O); the per-head counts are the cache's
    (uniform, or Ada-KV's flat allocation, which must then differ between heads somewhere)."""
    budget, n = 40, 90
    ids = torch.randint(0, 96, (1, n), generator=torch.Generator().manual_seed(2))
    method = build(name, budget, window=window)
    pre = {}
    hooks = [
        layer.self_attn.q_proj.register_forward_hook(
            lambda m, a, out, i=i: pre.__setitem__(i, out[0].view(n, 6, 8).transpose(0, 1).tolist())
        )
        for i, layer in enumerate(tiny_model.model.layers)
    ]
    try:
        capture, _ = capture_prefill(tiny_model, ids, None)
    finally:
        for hook in hooks:
            hook.remove()
    cache = method.build_cache(tiny_model, max_new_tokens=2)
    tiny_model(ids, past_key_values=cache, use_cache=True)
    uneven = False
    freqs = [100.0 ** (-2 * c / 8) for c in range(4)]
    for index, (layer, captured) in enumerate(zip(cache.layers, capture.layers, strict=True)):
        keys, values = to_lists(captured.full_keys), to_lists(captured.full_values)
        if name == "h2o":
            ref = ref_h2o(to_lists(captured.query_window), keys, captured.scaling, window)
        else:
            ref = ref_expected_attention(pre[index], keys, values, freqs, 1.0, captured.scaling, window)
        kept = [p.tolist() for p in layer.positions]
        caps = [len(p) - window for p in kept]
        uneven |= len(set(caps)) > 1
        assert kept == ref_kept(ref, caps, n, window)
    assert cache.report()["kept_entries"] <= 3 * 2 * budget
    assert uneven == name.startswith("adakv")


# ---------------------------------------------------------------------------------------------------------
# The interface: how many queries a scorer reads, what a sweep's capture keeps
# ---------------------------------------------------------------------------------------------------------


def test_queries_needed_and_what_a_capture_keeps():
    def method(scorer, window=32):
        return CompressionMethod("m", 64, window, scorer)

    snap, tova = method(SnapKVScorer()), method(TovaScorer(), window=8)
    assert queries_read(snap) == 32 and queries_read(tova) == 8  # the window: today's behaviour
    assert capture_queries([snap, tova]) == 32
    assert capture_queries([]) == 1
    assert capture_queries([tova, method(ExpectedAttentionScorer(recent=50))]) == 50
    assert capture_queries([snap, method(H2OScorer())]) is None
    assert capture_queries([method(ExpectedAttentionScorer())]) is None


@torch.no_grad()
def test_capture_keeps_all_queries_or_the_last_ones(tiny_model):
    ids = torch.randint(0, 96, (1, 50), generator=torch.Generator().manual_seed(4))
    every, _ = capture_prefill(tiny_model, ids, None)
    last, _ = capture_prefill(tiny_model, ids, 8)
    assert isinstance(every, PrefillCapture)
    assert every.rotary is not None and every.rotary.inv_freq.numel() == 4
    for a, b in zip(every.layers, last.layers, strict=True):
        assert a.query_window.shape == (6, 50, 8) and b.query_window.shape == (6, 8, 8)
        assert torch.equal(a.query_window[:, -8:], b.query_window)


@torch.no_grad()
def test_score_layer_refuses_too_few_queries(tiny_model):
    """H2O on a capture that kept only the window queries would score on the wrong queries: refused."""
    ids = torch.randint(0, 96, (1, 50), generator=torch.Generator().manual_seed(4))
    capture, _ = capture_prefill(tiny_model, ids, 32)
    layer = capture.layers[0]
    method = CompressionMethod("h2o", 40, 32, H2OScorer())
    with pytest.raises(ValueError, match="last 50 prompt queries; got 32"):
        score_layer(method, layer.query_window, layer.full_keys, layer.full_values, layer.scaling)
    recent = CompressionMethod("ea", 40, 8, ExpectedAttentionScorer(recent=20))
    recent.scorer.bind_model(capture.rotary)
    scored = score_layer(recent, layer.query_window, layer.full_keys, layer.full_values, layer.scaling)
    direct = recent.scorer(layer.query_window[:, -20:], layer.full_keys, layer.full_values, 8, layer.scaling)
    assert torch.equal(scored.scores, direct.scores)
