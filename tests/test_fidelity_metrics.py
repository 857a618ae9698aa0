"""Fidelity metrics against hand-computed values and loop-based float64 references."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eval.benchmarks.fidelity.reference import FidelityReference, LayerCapture, layer_attention_errors
from eval.metrics.fidelity import (
    LOWER_IS_BETTER,
    causal_attention_many,
    next_token_kl,
    relative_l2,
    token_nll,
    top1_agreement,
)


def test_kl_hand_computed():
    full = torch.log(torch.tensor([[0.5, 0.5], [0.1, 0.9]]))
    comp = torch.log(torch.tensor([[0.25, 0.75], [0.1, 0.9]]))
    kl = next_token_kl(full, comp)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl[0].item() == pytest.approx(expected, abs=1e-7)
    assert kl[1].item() == pytest.approx(0.0, abs=1e-7)


def test_kl_matches_float64_loop_on_random_logits():
    gen = torch.Generator().manual_seed(0)
    full = torch.randn(7, 301, generator=gen) * 4
    comp = full + torch.randn(7, 301, generator=gen)
    got = next_token_kl(full, comp)
    for i in range(7):
        f = full[i].double().numpy()
        c = comp[i].double().numpy()
        p = np.exp(f - f.max()) / np.exp(f - f.max()).sum()
        q = np.exp(c - c.max()) / np.exp(c - c.max()).sum()
        assert got[i].item() == pytest.approx(
            float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))), rel=1e-9
        )
    assert (got > 0).all()


def test_top1_and_nll_hand_computed():
    full = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    comp = torch.tensor([[0.0, 1.0, 2.0], [3.0, 1.0, 0.0]])
    assert top1_agreement(full, comp).tolist() == [0.0, 1.0]
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    assert token_nll(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))
    assert token_nll(logits, torch.tensor([0])).item() == pytest.approx(math.log(4.0))


def test_relative_l2_hand_computed():
    exact = torch.tensor([[3.0, 4.0]])
    assert relative_l2(torch.tensor([[3.0, 5.0]]), exact) == pytest.approx(0.2)
    assert relative_l2(exact, exact) == 0.0
    assert relative_l2(torch.zeros(2), torch.zeros(2)) == 0.0


def test_lower_is_better_marks_the_error_metrics():
    assert LOWER_IS_BETTER == {"kl", "nll_delta", "attn_err"}


def _random_packed_cache(gen, hkv, n, d, keep_prob):
    """Dense (Hkv, n, d) keys/values, a random keep mask, and the kept rows packed head after head."""
    keys = torch.randn(hkv, n, d, generator=gen)
    values = torch.randn(hkv, n, d, generator=gen)
    keep = torch.rand(hkv, n, generator=gen) < keep_prob
    keep[:, -1] = True  # every head keeps something
    heads, pos = keep.nonzero(as_tuple=True)
    return keys, values, keep, keys[heads, pos], values[heads, pos], heads


def _dense_attention_float64(query, keys, values, keep, new_keys, new_values, scaling):
    """Loop over heads and positions, float64, masks applied by hand (independent of the packed code)."""
    hq, m, d = query.shape
    hkv = keys.shape[0]
    out = np.zeros((hq, m, d))
    for h in range(hq):
        g = h // (hq // hkv)
        for i in range(m):
            ks = [keys[g, p].double().numpy() for p in range(keys.shape[1]) if keep[g, p]]
            vs = [values[g, p].double().numpy() for p in range(keys.shape[1]) if keep[g, p]]
            ks += [new_keys[g, j].double().numpy() for j in range(i + 1)]
            vs += [new_values[g, j].double().numpy() for j in range(i + 1)]
            q = query[h, i].double().numpy()
            logits = np.array([q @ k for k in ks]) * scaling
            w = np.exp(logits - logits.max())
            w /= w.sum()
            out[h, i] = sum(wi * vi for wi, vi in zip(w, vs))
    return out


def test_causal_attention_many_matches_dense_float64():
    """Several caches of one continuation (different kept rows, shuffled) in one padded call."""
    gen = torch.Generator().manual_seed(1)
    hq, hkv, n, m, d = 6, 2, 23, 5, 8
    query = torch.randn(hq, m, d, generator=gen)
    nk, nv = torch.randn(hkv, m, d, generator=gen), torch.randn(hkv, m, d, generator=gen)
    prompts, wants = [], []
    for keep_prob in (0.5, 0.1, 1.0, 0.0):  # 0.0: one row per head
        keys, values, keep, pk, pv, heads = _random_packed_cache(gen, hkv, n, d, keep_prob)
        perm = torch.randperm(pk.shape[0], generator=gen)  # row order must not matter
        prompts.append((pk[perm], pv[perm], heads[perm]))
        wants.append(_dense_attention_float64(query, keys, values, keep, nk, nv, d**-0.5))
    # KV head 0 keeps nothing: its queries see only the new tokens.
    only = heads == 1
    keep[0] = False
    prompts.append((pk[only], pv[only], heads[only]))
    wants.append(_dense_attention_float64(query, keys, values, keep, nk, nv, d**-0.5))
    got = causal_attention_many(query, prompts, nk, nv, d**-0.5)
    assert got.shape == (5, hq, m, d)
    for k, want in enumerate(wants):
        np.testing.assert_allclose(got[k].double().numpy(), want, rtol=1e-5, atol=1e-6)
    alone = causal_attention_many(query, prompts[:1], nk, nv, d**-0.5)[0]  # padding changes nothing
    np.testing.assert_allclose(alone.numpy(), got[0].numpy(), rtol=1e-6, atol=1e-7)


def test_attn_err_matches_dense_float64_on_random_per_head_caches():
    """layer_attention_errors on a fake compressed layer vs dense masked attention in float64."""
    gen = torch.Generator().manual_seed(2)
    hq, hkv, n, m, d = 4, 2, 31, 6, 8
    proj = torch.nn.Linear(hq * d, 16, bias=False)
    module = SimpleNamespace(o_proj=proj)
    captures, layers, expected = [], [], []
    for keep_prob in (0.3, 0.8, 1.0):
        keys, values, keep, pk, pv, heads = _random_packed_cache(gen, hkv, n, d, keep_prob)
        query = torch.randn(hq, m, d, generator=gen)
        nk, nv = torch.randn(hkv, m, d, generator=gen), torch.randn(hkv, m, d, generator=gen)
        everything = torch.ones_like(keep)
        w = proj.weight.detach().double().numpy()
        full = _dense_attention_float64(query, keys, values, everything, nk, nv, d**-0.5)
        kept = _dense_attention_float64(query, keys, values, keep, nk, nv, d**-0.5)
        o_full = full.transpose(1, 0, 2).reshape(m, hq * d) @ w.T
        o_kept = kept.transpose(1, 0, 2).reshape(m, hq * d) @ w.T
        expected.append(np.linalg.norm(o_kept - o_full) / np.linalg.norm(o_full))
        captures.append(LayerCapture(query, nk, nv, torch.from_numpy(o_full).float(), d**-0.5, module))
        head_lens = torch.bincount(heads, minlength=hkv)
        layers.append(SimpleNamespace(prompt_keys=pk, prompt_values=pv, head_lens=head_lens))
    reference = FidelityReference(n, torch.zeros(m + 1, dtype=torch.long), torch.zeros(m, 5), captures)
    got = layer_attention_errors(reference, SimpleNamespace(layers=layers))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert got[2] == pytest.approx(0.0, abs=1e-6) and got[0] > got[1] > 0


def test_similar_lengths_bounds_the_padding():
    from lava.varlen import similar_lengths

    # sorted: 0 | 10 12 | 13 (> 1.25 x 10) | 100 120
    assert similar_lengths([10, 100, 12, 0, 120, 13], slack=1.25) == [[3], [0, 2], [5], [1, 4]]
    # 0 and 1 together (lengths up to slack x 1); 12 <= 1.5 x 10
    assert similar_lengths([0, 1, 10, 12, 16], slack=1.5) == [[0, 1], [2, 3], [4]]
    assert similar_lengths([]) == []
    assert similar_lengths([5, 5, 5]) == [[0, 1, 2]]


def test_full_distribution_scores_equal_the_definitions():
    """FullDistribution's log-ratio form of KL and NLL (float32 elementwise, float64 sums) against the
    float64 definitions next_token_kl / token_nll, at KL from ~1e-6 to ~10 nats."""
    from eval.metrics.fidelity import FullDistribution

    gen = torch.Generator().manual_seed(5)
    full = torch.randn(7, 3000, generator=gen) * 4
    targets = torch.randint(0, 3000, (7,), generator=gen)
    summary = FullDistribution.of(full)
    for scale in (0.001, 0.01, 1.0, 5.0):
        other = full + scale * torch.randn(7, 3000, generator=gen)
        kl, nll = summary.kl_and_nll(other, targets)
        want = next_token_kl(full, other)
        assert want.min() > 1e-7
        # float32 products: the error is ~1e-7 of the first-order term sum p |delta| (~ scale), not of KL
        torch.testing.assert_close(kl, want, rtol=1e-4, atol=1e-7 * scale)
        torch.testing.assert_close(nll, token_nll(other, targets), rtol=1e-6, atol=1e-6)
        assert float(summary.top1_agreement(other).sum()) == float(top1_agreement(full, other).sum())
    torch.testing.assert_close(summary.nll(targets), token_nll(full, targets), rtol=1e-12, atol=1e-12)
    kl, nll = summary.kl_and_nll(full.clone(), targets)
    assert torch.equal(kl, torch.zeros(7, dtype=torch.float64))  # identical logits: exactly 0
    assert torch.equal(nll, summary.nll(targets))  # and exactly the full NLL


def test_full_distribution_takes_the_exact_path_for_large_log_ratios():
    """A compressed logit 80 above the full one would overflow the fast path's float32 exp."""
    from eval.metrics.fidelity import FullDistribution

    gen = torch.Generator().manual_seed(6)
    full = torch.randn(3, 50, generator=gen) * 4
    other = full.clone()
    other[1, 7] += 80.0
    targets = torch.tensor([1, 7, 2])
    kl, nll = FullDistribution.of(full).kl_and_nll(other, targets)
    assert torch.isfinite(kl).all() and kl[1] > 1.0
    torch.testing.assert_close(kl, next_token_kl(full, other), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(nll, token_nll(other, targets), rtol=1e-9, atol=1e-9)


def test_full_distribution_when_the_compressed_cache_moves_the_mass_away():
    """A confident full distribution (top token ~1 - 1e-15) whose top logit the compressed cache
    lowers by 0.7-45 nats, and a common shift (softmax-invariant): the cases where log1p(Z_q/Z_p - 1)
    cancels or the first-order terms are large. Error bound: 1e-7 of sum p |delta|."""
    from eval.metrics.fidelity import FullDistribution

    gen = torch.Generator().manual_seed(7)
    full = torch.randn(5, 500, generator=gen)
    full[:, 3] += 40.0
    other = full.clone()
    other[:, 3] -= torch.tensor([30.0, 45.0, 10.0, 0.0, 0.7])
    other[4] += 3.0
    targets = torch.tensor([3, 3, 5, 3, 3])
    kl, nll = FullDistribution.of(full).kl_and_nll(other, targets)
    want = next_token_kl(full, other)
    p = torch.softmax(full.double(), dim=-1)
    bound = 1e-7 * (p * (full - other).double().abs()).sum(dim=-1) + 1e-12
    assert ((kl - want).abs() <= bound).all(), (kl, want)
    assert (kl >= 0).all() and kl[0] > 0.1 and kl[1] > 10.0
    assert ((nll - token_nll(other, targets)).abs() <= bound).all()
