"""Decode attention over per-head variable-length caches against a dense, padded and masked reference.

``lava.attention.packed_attention`` scores all stored rows (prompt head after head, then the decode
steps token after token, as ``CompressedLayer`` lays them out) against all query heads in one SDPA call
and masks the pairs of different KV heads and future steps (``decode_bias``); the reference below
instead pads every KV head to the longest one, builds an explicit -inf mask (padding, and causality
among the new tokens of the tail) and runs a plain softmax per query head, in float64. The last tests
drive a real ``CompressedLayer`` (compression, appends past its reserve) against the same reference.
"""

from __future__ import annotations

import math

import pytest
import torch

from lava.attention import decode_bias, packed_attention


def dense_reference(query, head_keys, head_values, tail_keys, tail_values, scaling):
    """Per query head h (KV head h // g) and new token i: softmax over [its packed entries; tail entries
    ``< T - q + i + 1``], padded to a common length with -inf logits."""
    hq, q, d = query.shape
    hkv, t, _ = tail_keys.shape
    group = hq // hkv
    longest = max(k.shape[0] for k in head_keys)
    keys = torch.zeros(hkv, longest + t, d, dtype=torch.float64)
    values = torch.zeros(hkv, longest + t, d, dtype=torch.float64)
    visible = torch.zeros(hkv, q, longest + t, dtype=torch.bool)
    for kv in range(hkv):
        length = head_keys[kv].shape[0]
        keys[kv, :length] = head_keys[kv].double()
        values[kv, :length] = head_values[kv].double()
        keys[kv, longest:] = tail_keys[kv].double()
        values[kv, longest:] = tail_values[kv].double()
        for i in range(q):
            visible[kv, i, :length] = True
            visible[kv, i, longest : longest + t - q + i + 1] = True
    out = torch.empty(hq, q, d, dtype=torch.float64)
    for h in range(hq):
        kv = h // group
        logits = query[h].double() @ keys[kv].T * scaling  # (q, longest + T)
        logits = logits.masked_fill(~visible[kv], float("-inf"))
        out[h] = torch.softmax(logits, dim=-1) @ values[kv]
    return out


def pack(head_keys, head_values):
    lens = torch.tensor([k.shape[0] for k in head_keys])
    row_head = torch.repeat_interleave(torch.arange(len(head_keys)), lens)
    return torch.cat(head_keys), torch.cat(head_values), row_head


def cache_layout(head_keys, head_values, tail_keys, tail_values):
    """Rows as CompressedLayer stores them: the prompt head after head, then step after step."""
    keys, values, row_head = pack(head_keys, head_values)
    hkv, t, d = tail_keys.shape
    keys = torch.cat([keys, tail_keys.transpose(0, 1).reshape(t * hkv, d)])
    values = torch.cat([values, tail_values.transpose(0, 1).reshape(t * hkv, d)])
    row_head = torch.cat([row_head, torch.arange(hkv).repeat(t)])
    row_step = torch.cat([torch.full((len(row_head) - t * hkv,), -1), torch.arange(t).repeat_interleave(hkv)])
    return keys, values, row_head, row_step


def attend(query, head_keys, head_values, tail_keys, tail_values, scaling):
    dtype = query.dtype
    keys, values, row_head, row_step = cache_layout(
        [k.to(dtype) for k in head_keys],
        [v.to(dtype) for v in head_values],
        tail_keys.to(dtype),
        tail_values.to(dtype),
    )
    hq, q, _ = query.shape
    hkv, t, _ = tail_keys.shape
    bias = decode_bias(row_head, row_step, hq, hkv, q, t)
    return packed_attention(query, keys, values, bias, scaling)


CASES = [
    # (Hq, Hkv, d, per-head packed lengths, tail length T, new tokens q, seed)
    (9, 3, 8, [1, 17, 5], 1, 1, 0),  # a head with a single entry
    (9, 3, 8, [1, 17, 5], 4, 3, 1),  # three new tokens, causal among them
    (8, 2, 16, [40, 3], 3, 3, 2),  # the whole tail is the new tokens
    (8, 2, 16, [1, 1], 7, 1, 3),
    (4, 4, 8, [12, 1, 30, 7], 5, 3, 4),  # MHA
    (4, 4, 8, [2, 64, 9, 33], 9, 1, 5),
    (6, 1, 32, [50], 2, 1, 6),  # MQA
]


def case_tensors(hq, hkv, d, lens, t, q, seed):
    """Per-head prompt keys and values, tail keys and values, and queries of one case of CASES."""
    gen = torch.Generator().manual_seed(seed)
    head_keys = [torch.randn(n, d, generator=gen) * 2 for n in lens]
    head_values = [torch.randn(n, d, generator=gen) for n in lens]
    tail_keys = torch.randn(hkv, t, d, generator=gen) * 2
    tail_values = torch.randn(hkv, t, d, generator=gen)
    return head_keys, head_values, tail_keys, tail_values, torch.randn(hq, q, d, generator=gen)


@pytest.mark.parametrize(("hq", "hkv", "d", "lens", "t", "q", "seed"), CASES)
def test_packed_attention_matches_dense_masked_reference(hq, hkv, d, lens, t, q, seed):
    scaling = 1.0 / math.sqrt(d)
    head_keys, head_values, tail_keys, tail_values, query = case_tensors(hq, hkv, d, lens, t, q, seed)
    out = attend(query, head_keys, head_values, tail_keys, tail_values, scaling)
    ref = dense_reference(query, head_keys, head_values, tail_keys, tail_values, scaling)
    assert out.shape == (hq, q, d) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_packed_attention_ignores_other_heads_and_future_tokens():
    """Changing another KV head's entries, or the tail entries after a token, leaves that output unchanged."""
    gen = torch.Generator().manual_seed(7)
    hq, hkv, d, q, t = 4, 2, 8, 3, 5
    head_keys = [torch.randn(n, d, generator=gen) for n in (6, 2)]
    head_values = [torch.randn(n, d, generator=gen) for n in (6, 2)]
    tail_keys, tail_values = torch.randn(hkv, t, d, generator=gen), torch.randn(hkv, t, d, generator=gen)
    query = torch.randn(hq, q, d, generator=gen)
    base = attend(query, head_keys, head_values, tail_keys, tail_values, 0.3)

    other = [head_keys[0], head_keys[1] * 5 + 1]
    out = attend(query, other, [head_values[0], head_values[1] - 3], tail_keys, tail_values, 0.3)
    torch.testing.assert_close(out[:2], base[:2], rtol=0, atol=1e-6)  # query heads of KV head 0
    assert not torch.allclose(out[2:], base[2:], atol=1e-3)

    future_k, future_v = tail_keys.clone(), tail_values.clone()
    future_k[:, -1] += 10  # the last tail entry is the last new token: only token q-1 sees it
    future_v[:, -1] -= 10
    out = attend(query, head_keys, head_values, future_k, future_v, 0.3)
    torch.testing.assert_close(out[:, : q - 1], base[:, : q - 1], rtol=0, atol=1e-6)
    assert not torch.allclose(out[:, q - 1], base[:, q - 1], atol=1e-3)


def test_packed_attention_keeps_half_precision_dtype():
    gen = torch.Generator().manual_seed(8)
    head_keys = [torch.randn(n, 8, generator=gen) for n in (3, 9)]
    head_values = [torch.randn(n, 8, generator=gen) for n in (3, 9)]
    tail_keys, tail_values = torch.randn(2, 2, 8, generator=gen), torch.randn(2, 2, 8, generator=gen)
    query = torch.randn(4, 1, 8, generator=gen)
    out = attend(query.bfloat16(), head_keys, head_values, tail_keys.bfloat16(), tail_values.bfloat16(), 0.35)
    assert out.dtype == torch.bfloat16
    ref = dense_reference(query, head_keys, head_values, tail_keys, tail_values, 0.35)
    torch.testing.assert_close(out.double(), ref, rtol=0.05, atol=0.05)


# ---------------------------------------------------------------------------------------------------------
# A real CompressedLayer: compression, decode steps past the reserve (the buffer grows), a 3-token step
# ---------------------------------------------------------------------------------------------------------


def test_padded_attention_matches_dense_masked_reference():
    """The CUDA layout's kernel (each KV head padded to the longest, one SDPA), on every case above."""
    from lava.attention import causal_tail_bias, padded_attention, padded_bias

    for hq, hkv, d, lens, t, q, seed in CASES:
        scaling = 1.0 / math.sqrt(d)
        head_keys, head_values, tail_keys, tail_values, query = case_tensors(hq, hkv, d, lens, t, q, seed)
        width = max(lens)
        keys, values = torch.zeros(hkv, width + t, d), torch.zeros(hkv, width + t, d)
        for h in range(hkv):
            keys[h, : lens[h]], values[h, : lens[h]] = head_keys[h], head_values[h]
        keys[:, width:], values[:, width:] = tail_keys, tail_values
        bias = padded_bias(torch.tensor(lens), width + t, width, t, torch.float32)
        if q > 1:
            bias = causal_tail_bias(bias[:, :width], hq // hkv, q, t)
        else:
            bias = bias[:, None]
        out = padded_attention(query[None], keys[None], values[None], bias[None], scaling)[0]
        ref = dense_reference(query, head_keys, head_values, tail_keys, tail_values, scaling)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["masked-matmul", "sdpa-padded"])
@pytest.mark.parametrize(("hq", "hkv"), [(9, 3), (4, 4), (6, 1)])
@pytest.mark.parametrize("method_name", ["lava", "adakv", "snapkv"])
def test_compressed_layer_decode_matches_dense_reference(monkeypatch, method_name, hq, hkv, kernel):
    """Both storage layouts (packed on CPUs, padded on CUDA), forced here on the CPU."""
    import lava.cache
    from lava.allocation import EntropyLayerBudget, FlatHeadBudget, UniformHeadBudget, UniformLayerBudget
    from lava.attention import force_decode_kernel
    from lava.cache import CompressedCache
    from lava.method import CompressionMethod
    from lava.scorers.lava import LavaScorer
    from lava.scorers.snapkv import SnapKVScorer

    parts = {
        "lava": (LavaScorer(), EntropyLayerBudget(), FlatHeadBudget(0.2)),
        "adakv": (SnapKVScorer(), UniformLayerBudget(), FlatHeadBudget(0.2)),
        "snapkv": (SnapKVScorer(), UniformLayerBudget(), UniformHeadBudget()),
    }[method_name]
    n, d, budget, window = 70, 16, 20, 8
    gen = torch.Generator().manual_seed(hq * 7 + hkv)
    scaling = 1.0 / math.sqrt(d)
    cache = CompressedCache(CompressionMethod(method_name, budget, window, *parts), num_layers=1, reserve=2)
    layer = cache.layers[0]
    k = torch.randn(1, hkv, n, d, generator=gen)
    v = torch.randn(1, hkv, n, d, generator=gen)
    layer.update(k, v)
    monkeypatch.setattr(lava.cache, "PAD_SLACK", 100.0)  # pad however uneven the heads are
    with force_decode_kernel(kernel):
        layer.attend(torch.randn(1, hq, n, d, generator=gen), scaling)  # prefill: compresses the layer
    assert layer.kernel == kernel

    kept = layer.positions
    assert sum(len(p) for p in kept) <= hkv * budget
    head_keys = [k[0, h, pos] for h, pos in enumerate(kept)]
    head_values = [v[0, h, pos] for h, pos in enumerate(kept)]
    torch.testing.assert_close(layer.prompt_keys, torch.cat(head_keys), rtol=0, atol=0)
    tail_k = torch.zeros(hkv, 0, d)
    tail_v = torch.zeros(hkv, 0, d)
    for q in (1, 1, 1, 1, 1, 3, 1):  # reserve 2: the buffer grows twice
        new_k = torch.randn(1, hkv, q, d, generator=gen)
        new_v = torch.randn(1, hkv, q, d, generator=gen)
        layer.update(new_k, new_v)
        tail_k, tail_v = torch.cat([tail_k, new_k[0]], 1), torch.cat([tail_v, new_v[0]], 1)
        query = torch.randn(1, hq, q, d, generator=gen)
        out = layer.attend(query, scaling)  # (1, q, Hq, d)
        ref = dense_reference(query[0], head_keys, head_values, tail_k, tail_v, scaling)
        torch.testing.assert_close(out[0].transpose(0, 1).double(), ref, rtol=1e-5, atol=1e-5)
    assert layer.tail_len == 9 and layer.tail_capacity >= 9 and layer.seq_len == n + 9
    # the prompt rows never moved: still exactly the kept entries
    torch.testing.assert_close(layer.prompt_values, torch.cat(head_values), rtol=0, atol=0)
    # crop back to the prompt plus 2 steps: the next step sees exactly those
    layer.crop(n + 2)
    assert layer.tail_len == 2 and layer.seq_len == n + 2
    new_k, new_v = torch.randn(1, hkv, 1, d, generator=gen), torch.randn(1, hkv, 1, d, generator=gen)
    layer.update(new_k, new_v)
    query = torch.randn(1, hq, 1, d, generator=gen)
    ref = dense_reference(
        query[0], head_keys, head_values, torch.cat([tail_k[:, :2], new_k[0]], 1),
        torch.cat([tail_v[:, :2], new_v[0]], 1), scaling,
    )  # fmt: skip
    torch.testing.assert_close(
        layer.attend(query, scaling)[0].transpose(0, 1).double(), ref, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="only the 3 decode steps"):
        layer.crop(n - 1)


def test_uneven_heads_stay_packed_on_the_padded_kernel():
    """Padding every head to the longest must not cost more than PAD_SLACK of the rows: such a layer
    keeps the packed layout (memory first)."""
    from lava.allocation import UniformHeadBudget, UniformLayerBudget
    from lava.attention import PAD_SLACK, force_decode_kernel
    from lava.cache import CompressedCache
    from lava.method import CompressionMethod
    from lava.scorers.snapkv import SnapKVScorer

    method = CompressionMethod("snapkv", 64, 4, SnapKVScorer(), UniformLayerBudget(), UniformHeadBudget())
    for lens, padded in (([30, 30, 26], True), ([30, 5, 5], False)):
        layer = CompressedCache(method, num_layers=1).layers[0]
        hkv, n, d = 3, max(lens), 8
        layer.update(torch.randn(1, hkv, n, d), torch.randn(1, hkv, n, d))
        rank = torch.full((hkv, n), 10**6)
        for h, length in enumerate(lens):
            rank[h, :length] = -1
        with force_decode_kernel("sdpa-padded"):
            layer.store(rank, torch.zeros(hkv, dtype=torch.long), reserve=4)
        assert (hkv * max(lens) <= (1 + PAD_SLACK) * sum(lens)) == padded
        assert layer.padded == padded and layer.head_lens.tolist() == lens


# ---------------------------------------------------------------------------------------------------------
# The CUDA path's merge logic, on CPU: flash-attn replaced by a torch implementation of its documented
# contract (flash_attn_varlen_func, flash-attn >= 2.4: out (total_q, nheads, d), softmax_lse
# (nheads, total_q)). Only the log-sum-exp merge of the packed prompt and the dense tail is under test.
# ---------------------------------------------------------------------------------------------------------


def _fake_flash_attn_varlen_func(
    q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=None, causal=False, return_attn_probs=False
):
    total_q, nheads, d = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(nheads, total_q, dtype=torch.float32)
    for b in range(len(cu_q) - 1):
        qs, qe, ks, ke = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        assert k.shape[1] == 1 and qe - qs == 1  # one query row carrying the group, MQA inside the sequence
        logits = q[qs:qe, :, :].float().transpose(0, 1) @ k[ks:ke, 0].float().T * softmax_scale  # (h, 1, Lk)
        lse[:, qs:qe] = torch.logsumexp(logits, dim=-1)
        out[qs:qe] = (torch.softmax(logits, dim=-1) @ v[ks:ke, 0].float()).transpose(0, 1).to(q.dtype)
    return (out, lse, None) if return_attn_probs else out


@pytest.mark.parametrize(
    ("hq", "hkv", "lens", "t"),
    [
        (8, 2, [40, 3], 3),  # g = 4 != Hkv
        (6, 1, [50], 2),
        (12, 3, [1, 17, 5], 1),
        (9, 3, [1, 17, 5], 4),  # g == Hkv: the softmax_lse layout matters
        (4, 2, [12, 30], 2),
    ],
)
def test_flash_path_merge_matches_dense_reference(monkeypatch, hq, hkv, lens, t):
    import sys
    import types

    from lava.attention import flash_packed_attention

    monkeypatch.setitem(
        sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=_fake_flash_attn_varlen_func)
    )
    gen = torch.Generator().manual_seed(hq * 10 + hkv)
    d = 16
    scaling = 1.0 / math.sqrt(d)
    head_keys = [torch.randn(n, d, generator=gen) * 2 for n in lens]
    head_values = [torch.randn(n, d, generator=gen) for n in lens]
    tail_keys = torch.randn(hkv, t, d, generator=gen) * 2
    tail_values = torch.randn(hkv, t, d, generator=gen)
    query = torch.randn(hq, 1, d, generator=gen)
    keys, values, _ = pack(head_keys, head_values)
    cu = torch.nn.functional.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(torch.int32)

    out = flash_packed_attention(query, keys, values, cu, max(lens), tail_keys, tail_values, scaling)
    ref = dense_reference(query, head_keys, head_values, tail_keys, tail_values, scaling)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_half_precision_logits_are_computed_in_fp32():
    """bf16 inputs: the error against a float64 reference of the same (bf16-rounded) inputs stays
    within that of SDPA on the dense per-head layout (which accumulates logits in fp32); rounding the
    logits to bf16 before the softmax was about 5x worse."""
    gen = torch.Generator().manual_seed(9)
    lens, hq, d = [700, 300, 500], 9, 64
    head_keys = [(3 * torch.randn(n, d, generator=gen)).bfloat16() for n in lens]
    head_values = [torch.randn(n, d, generator=gen).bfloat16() for n in lens]
    tail_keys, tail_values = torch.zeros(3, 0, d).bfloat16(), torch.zeros(3, 0, d).bfloat16()
    query = (3 * torch.randn(hq, 1, d, generator=gen)).bfloat16()
    scaling = 1.0 / math.sqrt(d)
    ref = dense_reference(query, head_keys, head_values, tail_keys.float(), tail_values.float(), scaling)
    ours = attend(query, head_keys, head_values, tail_keys, tail_values, scaling)
    sdpa = torch.cat(
        [
            torch.nn.functional.scaled_dot_product_attention(
                query[h : h + 1], head_keys[h // 3][None], head_values[h // 3][None], scale=scaling
            )
            for h in range(hq)
        ]
    )
    err_ours = (ours.double() - ref).abs().max()
    err_sdpa = (sdpa.double() - ref).abs().max()
    assert err_ours <= 1.5 * err_sdpa, (err_ours, err_sdpa)
