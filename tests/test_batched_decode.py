"""A batch of compressed caches decoded together (``lava.batch``) against the dense padded reference.

Several one-layer caches of different methods and budgets (so different per-head lengths) are
compressed from their own random prompts, then stepped as one :class:`~lava.batch.BatchedCache`
layer: each row's output must equal the float64 dense reference of ``test_packed_attention`` over
that row's kept entries and its own decode steps, through buffer growth and rows leaving the batch.
"""

from __future__ import annotations

import math

import pytest
import torch

from lava.allocation import EntropyLayerBudget, FlatHeadBudget, UniformHeadBudget, UniformLayerBudget
from lava.attention import force_decode_kernel
from lava.batch import BatchedLayer
from lava.cache import CompressedCache
from lava.method import CompressionMethod
from lava.scorers import LavaScorer, SnapKVScorer
from tests.test_packed_attention import dense_reference

HQ, HKV, N, D, WINDOW = 6, 2, 60, 16, 4
PARTS = {
    "lava": (LavaScorer(), EntropyLayerBudget(), FlatHeadBudget(0.2)),
    "adakv": (SnapKVScorer(), UniformLayerBudget(), FlatHeadBudget(0.2)),
    "snapkv": (SnapKVScorer(), UniformLayerBudget(), UniformHeadBudget()),
}


def _compressed_layer(name: str, budget: int, gen: torch.Generator):
    cache = CompressedCache(CompressionMethod(name, budget, WINDOW, *PARTS[name]), num_layers=1, reserve=2)
    layer = cache.layers[0]
    k, v = torch.randn(1, HKV, N, D, generator=gen), torch.randn(1, HKV, N, D, generator=gen)
    layer.update(k, v)
    layer.attend(torch.randn(1, HQ, N, D, generator=gen), 1.0 / math.sqrt(D))  # prefill: compresses
    kept = layer.positions
    return layer, [k[0, h, p] for h, p in enumerate(kept)], [v[0, h, p] for h, p in enumerate(kept)]


def _step_and_check(batch, rows, tails, live, q, gen):
    """Append ``q`` random steps to the live rows, attend, and check each row against the dense reference."""
    scaling = 1.0 / math.sqrt(D)
    new_k = torch.randn(len(live), HKV, q, D, generator=gen)
    new_v = torch.randn(len(live), HKV, q, D, generator=gen)
    batch.update(new_k, new_v)
    query = torch.randn(len(live), HQ, q, D, generator=gen)
    out = batch.attend(query, scaling)  # (B, q, Hq, D)
    for b, r in enumerate(live):
        tk, tv = tails[r]
        tails[r] = (torch.cat([tk, new_k[b]], 1), torch.cat([tv, new_v[b]], 1))
        _, head_keys, head_values = rows[r]
        ref = dense_reference(query[b], head_keys, head_values, *tails[r], scaling)
        torch.testing.assert_close(out[b].transpose(0, 1).double(), ref, rtol=1e-5, atol=1e-5)
    return out


@pytest.mark.parametrize("kernel", ["masked-matmul", "sdpa-padded"])
def test_batched_layer_matches_dense_reference_per_row(kernel):
    """Both batch layouts (packed rows on CPUs, per-head padding on CUDA), forced here on the CPU; in
    the padded one, members stored packed (heads too uneven to pad) and padded are mixed."""
    gen = torch.Generator().manual_seed(0)
    specs = [("lava", 10), ("adakv", 24), ("snapkv", 8), ("lava", 80)]  # 80 > N: nothing evicted
    with force_decode_kernel(kernel):
        rows = [_compressed_layer(name, budget, gen) for name, budget in specs]
    lengths = {sum(len(p) for p in layer.positions) for layer, _, _ in rows}
    assert len(lengths) > 1, "the rows must differ in length for the padding to be exercised"
    if kernel == "sdpa-padded":
        assert {layer.padded for layer, _, _ in rows} == {True, False}
    batch = BatchedLayer([layer for layer, _, _ in rows], take_storage=kernel == "sdpa-padded")
    tails = [(torch.zeros(HKV, 0, D), torch.zeros(HKV, 0, D)) for _ in rows]
    live = list(range(len(rows)))
    with force_decode_kernel(kernel):
        for step in range(7):  # reserve 2: the batch buffers grow twice
            if step == 4:  # rows 1 and 3 stop: the batch keeps rows 2 and 0, in that order
                live = [2, 0]
                batch.select([2, 0])
            _step_and_check(batch, rows, tails, live, 1, gen)
            assert batch.packed and batch.padded == (kernel == "sdpa-padded")
    assert batch.get_seq_length() == N + 7
    if kernel == "sdpa-padded":  # the batch took the members' buffers; their reports still count
        layer = rows[0][0]
        assert layer.keys is None and layer.parent.prompt_bytes() == layer.num_prompt_rows * 2 * D * 4


def test_batched_layer_multi_token_steps_match_dense_reference_per_row():
    """Teacher forcing (several new tokens per forward, the fidelity path): one padded attention for
    the batch, causal among the new tokens, over rows whose heads keep very different counts."""
    gen = torch.Generator().manual_seed(3)
    specs = [("adakv", 6), ("lava", 30), ("snapkv", 12), ("lava", 80)]
    rows = [_compressed_layer(name, budget, gen) for name, budget in specs]
    head_lens = [len(p) for layer, _, _ in rows for p in layer.positions]
    assert max(head_lens) > 3 * min(head_lens), "skewed heads exercise the per-head padding"
    batch = BatchedLayer([layer for layer, _, _ in rows])
    tails = [(torch.zeros(HKV, 0, D), torch.zeros(HKV, 0, D)) for _ in rows]
    for q in (5, 3):  # two multi-token forwards: the second also sees the first's steps
        out = _step_and_check(batch, rows, tails, list(range(len(rows))), q, gen)
        assert out.shape == (len(rows), q, HQ, D) and not batch.packed
    assert batch.get_seq_length() == N + 8
