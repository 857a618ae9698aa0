"""kvpress's query-agnostic scorers (knorm, keydiff, tova) against loop references of their definitions.

The references below are written from the definitions in docs/methods.md (kvpress's KnormPress,
KeyDiffPress and TOVAPress) on nested lists with ``math`` only, one loop per head and position, so
they share no code path with the vectorised scorers. The tests compare scores (``rtol=1e-5``) and
kept sets on random GQA and MHA inputs with windows from 1 to 32, check hand-computed values on tiny
cases, check what each score depends on (and what it must ignore), and run the configs through the
cache with the kvpress-parity switch ``method.window=1``.
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
from lava.prefill import capture_prefill
from lava.scorers import KeyDiffScorer, KeyNormScorer, TovaScorer

# ---------------------------------------------------------------------------------------------------------
# Loop references (from the definitions).
# ---------------------------------------------------------------------------------------------------------


def _dot(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def _norm(a: list[float]) -> float:
    return math.sqrt(_dot(a, a))


def ref_knorm(keys: list, window: int) -> list:
    """``score[kv][j] = -||k[kv][j]||_2`` for the prefix positions ``j < n - window``."""
    out = []
    for head in keys:
        prefix = len(head) - window
        out.append([-_norm(head[j]) for j in range(prefix)])
    return out


def ref_keydiff(keys: list, window: int) -> list:
    """``score[kv][j] = -cos(k[kv][j], a[kv])``, ``a[kv] = (1/n) sum_t k[kv][t] / ||k[kv][t]||`` over all n keys."""
    out = []
    for head in keys:
        n, d = len(head), len(head[0])
        anchor = [0.0] * d
        for t in range(n):
            length = _norm(head[t])
            for c in range(d):
                anchor[c] += head[t][c] / length / n
        anchor_norm = _norm(anchor)
        out.append([-_dot(head[j], anchor) / (_norm(head[j]) * anchor_norm) for j in range(n - window)])
    return out


def ref_tova(queries: list, keys: list, scaling: float, window: int) -> list:
    """``score[kv][j] = (1/Hq) sum_h softmax_t(q_last[h] . k[h // g][t] * scaling)[j]`` for every kv.

    ``queries[h]`` are head h's window queries, the last of which is the last prompt token's; the
    softmax runs over all ``n`` keys, that token's own included; the mean over all ``Hq`` heads is
    the same for every KV head.
    """
    hq, hkv, n = len(queries), len(keys), len(keys[0])
    group = hq // hkv
    prefix = n - window
    total = [0.0] * prefix
    for h in range(hq):
        last = queries[h][-1]
        logits = [_dot(last, keys[h // group][t]) * scaling for t in range(n)]
        top = max(logits)
        exps = [math.exp(x - top) for x in logits]
        denom = math.fsum(exps)
        for j in range(prefix):
            total[j] += exps[j] / denom
    shared = [x / hq for x in total]
    return [list(shared) for _ in range(hkv)]


def to_lists(t: torch.Tensor) -> list:
    return t.double().tolist()


# ---------------------------------------------------------------------------------------------------------
# Random inputs: (Hq, Hkv, d, window, n, seed).
# ---------------------------------------------------------------------------------------------------------

CASES = [
    (6, 2, 8, 4, 50, 0),  # GQA g=3
    (6, 2, 16, 32, 97, 1),  # GQA g=3, the configs' window
    (6, 3, 8, 1, 40, 2),  # GQA g=2, window 1 (the kvpress-parity switch)
    (8, 2, 8, 32, 33, 3),  # GQA g=4, P = 1
    (4, 4, 16, 8, 300, 4),  # MHA, long prompt
]


def case_id(case) -> str:
    hq, hkv, d, w, n, seed = case
    return f"hq{hq}-hkv{hkv}-d{d}-w{w}-n{n}-s{seed}"


def make_inputs(case):
    """Random post-RoPE window queries, keys (with a per-position scale, so norms differ) and values."""
    hq, hkv, d, w, n, seed = case
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(hq, w, d, generator=gen) * 1.5
    k = torch.randn(hkv, n, d, generator=gen) * (0.5 + torch.rand(hkv, n, 1, generator=gen))
    v = torch.randn(hkv, n, d, generator=gen)
    return q, k, v, 1.0 / math.sqrt(d)


def assert_scores_and_kept(lib: torch.Tensor, ref: list, n: int, window: int, atol: float) -> None:
    """fp32 scores close to the float64 reference, and the same kept sets for several per-head caps.

    ``atol`` is the fp32 rounding of the score's scale: 1e-12 for probabilities, 1e-6 for a cosine,
    which crosses zero where a relative tolerance means nothing."""
    hkv, prefix = len(ref), len(ref[0])
    assert tuple(lib.shape) == (hkv, prefix)
    assert lib.dtype == torch.float32
    torch.testing.assert_close(lib.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=atol)
    for k in sorted({1, max(prefix // 4, 1), max(prefix // 2, 1), max(prefix - 1, 1), prefix}):
        assert lib_kept(lib, [k] * hkv, n, window) == ref_kept(ref, [k] * hkv, n, window), f"top-{k} differs"
    caps = [(prefix * (h + 1)) // (hkv + 1) for h in range(hkv)]  # uneven, as a flat head allocator gives
    assert lib_kept(lib, caps, n, window) == ref_kept(ref, caps, n, window)


# ---------------------------------------------------------------------------------------------------------
# Against the loop references
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_knorm_matches_loop_reference(case):
    q, k, v, scaling = make_inputs(case)
    w, n = case[3], case[4]
    result = KeyNormScorer()(q, k, v, w, scaling)
    assert result.stat is None
    assert_scores_and_kept(result.scores, ref_knorm(to_lists(k), w), n, w, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_keydiff_matches_loop_reference(case):
    q, k, v, scaling = make_inputs(case)
    w, n = case[3], case[4]
    result = KeyDiffScorer()(q, k, v, w, scaling)
    assert result.stat is None
    assert_scores_and_kept(result.scores, ref_keydiff(to_lists(k), w), n, w, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_tova_matches_loop_reference(case):
    q, k, v, scaling = make_inputs(case)
    w, n = case[3], case[4]
    result = TovaScorer()(q, k, v, w, scaling)
    assert result.stat is None
    assert_scores_and_kept(result.scores, ref_tova(to_lists(q), to_lists(k), scaling, w), n, w, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bf16_inputs_are_scored_in_fp32(case):
    """Model-dtype (bf16) inputs give fp32 scores equal to scoring the same bf16 values in float64."""
    q, k, v, scaling = make_inputs(case)
    w = case[3]
    q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
    refs = {
        KeyNormScorer: ref_knorm(to_lists(k16), w),
        KeyDiffScorer: ref_keydiff(to_lists(k16), w),
        TovaScorer: ref_tova(to_lists(q16), to_lists(k16), scaling, w),
    }
    for cls, ref in refs.items():
        scores = cls()(q16, k16, v16, w, scaling).scores
        assert scores.dtype == torch.float32
        torch.testing.assert_close(
            scores.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-6
        )


# ---------------------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------------------


def test_knorm_hand_values():
    """Norms 5, 1, 3 (and 13 in the window): scores -5, -1, -3; the smallest norm is kept first."""
    keys = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [1.0, 2.0, 2.0], [12.0, 5.0, 0.0]]])
    q = torch.randn(2, 1, 3)
    result = KeyNormScorer()(q, keys, torch.zeros_like(keys), 1, 1.0)
    assert result.scores.tolist() == [[-5.0, -1.0, -3.0]]
    assert lib_kept(result.scores, [1], 4, 1) == [[1, 3]]  # norm 1, then the window
    assert lib_kept(result.scores, [2], 4, 1) == [[1, 2, 3]]


def test_keydiff_hand_values_anchor_over_the_whole_prompt():
    """Keys (1,0), (0,1), (3,0) and the window key (2,0): unit keys (1,0), (0,1), (1,0), (1,0), anchor
    (3/4, 1/4), |anchor| = sqrt(10)/4, so cos = 3/sqrt(10), 1/sqrt(10), 3/sqrt(10). An anchor over the
    prefix alone, (2/3, 1/3), would give 2/sqrt(5) and 1/sqrt(5) instead."""
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [2.0, 0.0]]])
    result = KeyDiffScorer()(torch.randn(1, 1, 2), keys, torch.zeros_like(keys), 1, 1.0)
    expected = [[-3 / math.sqrt(10), -1 / math.sqrt(10), -3 / math.sqrt(10)]]
    torch.testing.assert_close(
        result.scores.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0
    )
    assert lib_kept(result.scores, [1], 4, 1) == [[1, 3]]  # the odd one out, then the window
    assert lib_kept(result.scores, [2], 4, 1) == [[0, 1, 3]]  # tie between 0 and 2: the lower position


def test_tova_hand_values_own_entry_in_the_softmax_and_mean_over_all_heads():
    """d = 1, scaling 1, keys 0, ln 2, ln 3, 0 (the last is the last token's own). Query head 0 (= 1)
    gives (1, 2, 3, 1) / 7, query head 1 (= 0) gives 1/4 each; the prefix scores are their mean:
    (1/7 + 1/4) / 2 = 11/56, 15/56, 19/56. Excluding the own entry from the softmax would give /6."""
    keys = torch.tensor([[[0.0], [math.log(2.0)], [math.log(3.0)], [0.0]]])
    q = torch.tensor([[[1.0]], [[0.0]]])  # (Hq=2, w=1, d=1): one KV head read by a group of 2
    result = TovaScorer()(q, keys, torch.zeros_like(keys), 1, 1.0)
    expected = [[11 / 56, 15 / 56, 19 / 56]]
    torch.testing.assert_close(
        result.scores.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0
    )
    # GQA: two KV heads, the second with keys that make head 2 (of group 1) put 1/2 on position 0
    keys2 = torch.cat([keys, torch.tensor([[[math.log(3.0)], [0.0], [0.0], [math.log(2.0)]]])])
    q2 = torch.tensor([[[1.0]], [[0.0]], [[1.0]], [[0.0]]])  # heads 0, 1 read KV head 0; 2, 3 KV head 1
    scores = TovaScorer()(q2, keys2, torch.zeros_like(keys2), 1, 1.0).scores
    # head 2: (3, 1, 1, 2) / 7; head 3: 1/4 each; the mean over all four heads, for both KV heads
    shared = [
        (a + b + c + d) / 4
        for a, b, c, d in zip([1 / 7, 2 / 7, 3 / 7], [1 / 4] * 3, [3 / 7, 1 / 7, 1 / 7], [1 / 4] * 3)
    ]
    torch.testing.assert_close(
        scores.double(), torch.tensor([shared, shared], dtype=torch.float64), rtol=1e-6, atol=0
    )


# ---------------------------------------------------------------------------------------------------------
# What each score depends on
# ---------------------------------------------------------------------------------------------------------

DEP_CASE = (6, 2, 8, 4, 50, 0)


def _perturbed_queries_values(q, v):
    gen = torch.Generator().manual_seed(99)
    return torch.randn(q.shape, generator=gen) * 3, torch.randn(v.shape, generator=gen)


@pytest.mark.parametrize("cls", [KeyNormScorer, KeyDiffScorer], ids=lambda c: c.__name__)
def test_key_scorers_ignore_queries_values_and_scaling(cls):
    q, k, v, scaling = make_inputs(DEP_CASE)
    w = DEP_CASE[3]
    base = cls()(q, k, v, w, scaling).scores
    q2, v2 = _perturbed_queries_values(q, v)
    assert torch.equal(cls()(q2, k, v2, w, 7.0 * scaling).scores, base)


@pytest.mark.parametrize("cls", [KeyNormScorer, KeyDiffScorer], ids=lambda c: c.__name__)
def test_key_scorers_score_each_kv_head_from_its_own_keys(cls):
    q, k, v, scaling = make_inputs(DEP_CASE)
    w = DEP_CASE[3]
    base = cls()(q, k, v, w, scaling).scores
    other = k.clone()
    other[1] = torch.randn(other[1].shape, generator=torch.Generator().manual_seed(5))
    out = cls()(q, other, v, w, scaling).scores
    assert torch.equal(out[0], base[0])
    assert not torch.allclose(out[1], base[1])


def test_knorm_window_keys_do_not_matter_and_scaling_a_key_scales_its_score():
    q, k, v, scaling = make_inputs(DEP_CASE)
    w, n = DEP_CASE[3], DEP_CASE[4]
    base = KeyNormScorer()(q, k, v, w, scaling).scores
    changed = k.clone()
    changed[:, n - w :] *= 100.0
    changed[0, 3] *= -2.0  # the norm doubles, the sign does not count
    out = KeyNormScorer()(q, changed, v, w, scaling).scores
    expected = base.clone()
    expected[0, 3] *= 2.0
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)


def test_keydiff_is_scale_invariant_per_key_but_sees_the_window_keys():
    """Rescaling any key by a positive factor changes no score (unit keys in the anchor, cosine);
    the window keys enter through the anchor."""
    q, k, v, scaling = make_inputs(DEP_CASE)
    w, n = DEP_CASE[3], DEP_CASE[4]
    base = KeyDiffScorer()(q, k, v, w, scaling).scores
    rescaled = k * torch.rand(k.shape[0], n, 1, generator=torch.Generator().manual_seed(3)).add(0.1).mul(10)
    torch.testing.assert_close(KeyDiffScorer()(q, rescaled, v, w, scaling).scores, base, rtol=1e-5, atol=1e-6)
    rotated = k.clone()
    rotated[:, n - w :] = -rotated[:, n - w :]  # window directions reversed: the anchor moves
    assert not torch.allclose(KeyDiffScorer()(q, rotated, v, w, scaling).scores, base, atol=1e-3)


def test_tova_reads_only_the_last_query_and_ignores_values():
    q, k, v, scaling = make_inputs(DEP_CASE)
    w = DEP_CASE[3]
    base = TovaScorer()(q, k, v, w, scaling).scores
    earlier = q.clone()
    earlier[:, :-1] = torch.randn(earlier[:, :-1].shape, generator=torch.Generator().manual_seed(4)) * 5
    _, v2 = _perturbed_queries_values(q, v)
    assert torch.equal(TovaScorer()(earlier, k, v2, w, scaling).scores, base)
    # one query head's last query moves every KV head's scores, and all KV heads stay equal
    last = q.clone()
    last[5, -1] *= 3.0  # a head of the second group
    out = TovaScorer()(last, k, v, w, scaling).scores
    assert not torch.allclose(out[0], base[0])
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("cls", [KeyNormScorer, KeyDiffScorer, TovaScorer], ids=lambda c: c.__name__)
def test_the_window_only_trims_the_scored_prefix(cls):
    """Every score is defined over the whole prompt (TOVA's softmax, KeyDiff's anchor), so a larger
    window scores the same entries with the same values, minus the ones it now protects."""
    q, k, v, scaling = make_inputs((6, 2, 8, 32, 50, 0))  # 32 window queries
    n = k.shape[1]
    one = cls()(q[:, -1:], k, v, 1, scaling).scores
    for w in (4, 32):
        wide = cls()(q[:, -w:], k, v, w, scaling).scores
        assert wide.shape == (k.shape[0], n - w)
        torch.testing.assert_close(wide, one[:, : n - w], rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------
# The configs through the cache, with the kvpress-parity window
# ---------------------------------------------------------------------------------------------------------

NAMES = ["knorm", "keydiff", "tova"]
SCORERS = {"knorm": KeyNormScorer, "keydiff": KeyDiffScorer, "tova": TovaScorer}


def build(name: str, budget: int, **overrides) -> CompressionMethod:
    root = OmegaConf.create({"budget": budget, "model": {"name": "tiny-random"}})
    root.method = method_node(name)
    for key, value in overrides.items():
        OmegaConf.update(root, f"method.{key}", value)
    return instantiate(root.method)


@pytest.mark.parametrize("name", NAMES)
def test_configs_build_their_scorer_with_uniform_budgets(name):
    method = build(name, 64)
    assert isinstance(method.scorer, SCORERS[name])
    assert method.window == 32 and method.budget == 64
    assert type(method.layer_allocator).__name__ == "UniformLayerBudget"
    assert type(method.head_allocator).__name__ == "UniformHeadBudget"
    assert build(name, 64, window=1).window == 1  # the kvpress-parity switch


def test_window_zero_is_refused():
    """kvpress protects no window; here at least the last token is kept (docs/methods.md)."""
    with pytest.raises(UserError, match="method.window=0"):
        CompressionMethod("knorm", budget=64, window=0, scorer=KeyNormScorer())


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
    )
    torch.manual_seed(7)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    return model


def kvpress_kept(scores: list, budget: int) -> list[list[int]]:
    """kvpress's selection per head: its scores over the first n - 1 positions, the last position
    given the largest score, then the top ``budget`` of all n (ties to the lower position here)."""
    out = []
    for row in scores:
        full = list(row) + [max(row)]
        ranked = sorted(range(len(full)), key=lambda j: (-full[j], j))
        out.append(sorted(ranked[:budget]))
    return out


@torch.no_grad()
@pytest.mark.parametrize("name", NAMES)
def test_parity_window_keeps_kvpress_selection(tiny_model, name):
    """With ``method.window=1`` the cache keeps, per layer and head, the top ``B0 - 1`` prefix entries
    by the loop reference plus the last token. For TOVA this is exactly kvpress's kept set (kvpress
    gives the last token the largest score); for knorm and keydiff, kvpress ranks the last token with
    the others instead of always keeping it, the one difference window 0 would remove."""
    budget, n = 24, 90
    ids = torch.randint(0, 96, (1, n), generator=torch.Generator().manual_seed(2))
    method = build(name, budget, window=1)
    capture, _ = capture_prefill(tiny_model, ids, 1)
    cache = method.build_cache(tiny_model, max_new_tokens=2)
    tiny_model(ids, past_key_values=cache, use_cache=True)
    assert cache.report()["kept_entries"] == 3 * 2 * budget
    for layer, captured in zip(cache.layers, capture.layers, strict=True):
        keys = to_lists(captured.full_keys)
        if name == "knorm":
            ref = ref_knorm(keys, 1)
        elif name == "keydiff":
            ref = ref_keydiff(keys, 1)
        else:
            ref = ref_tova(to_lists(captured.query_window), keys, captured.scaling, 1)
        kept = [p.tolist() for p in layer.positions]
        assert kept == ref_kept(ref, [budget - 1] * 2, n, 1)
        if name == "tova":
            assert kept == kvpress_kept(ref, budget)
            assert kept[0] == kept[1]  # one decision per layer
