"""The teacher-forced fidelity path on tiny random models (Llama GQA 4/2, Qwen3 GQA 9/3 with q/k norms).

- With ``budget >= prompt`` nothing is evicted: kl 0, top1 1, nll_delta 0 and attn_err 0 (up to
  float rounding between the packed and the SDPA attention) for every method.
- The reference's logits equal those of one uncompressed forward over prompt + continuation, so
  positions and targets are aligned; the reference taken from a method's own prefill equals the
  one from a separate full prefill.
- With a small budget the cache really changes the model: every measure moves away from the ideal.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from eval.benchmarks.fidelity import compare, full_reference, measure
from eval.method_configs import compressing_methods
from eval.metrics.fidelity import token_nll
from lava.allocation import (
    EntropyLayerBudget,
    FlatHeadBudget,
    PyramidLayerBudget,
    UniformHeadBudget,
    UniformLayerBudget,
)
from lava.method import CompressionMethod
from lava.scorers.lava import LavaScorer
from lava.scorers.snapkv import SnapKVScorer

PROMPT, M, WINDOW = 48, 6, 8
COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    vocab_size=128,
    num_hidden_layers=3,
    max_position_embeddings=256,
    initializer_range=0.1,
)


def _config(family: str):
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, head_dim=16, **COMMON)
    return tf.Qwen3Config(num_attention_heads=9, num_key_value_heads=3, head_dim=8, **COMMON)


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def tiny(request):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(request.param), attn_implementation="sdpa").eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (PROMPT + M + 1,), generator=gen)
    return model, ids[:PROMPT], ids[PROMPT:]


def methods(budget: int) -> list[CompressionMethod]:
    return [
        CompressionMethod(
            "snapkv", budget, WINDOW, SnapKVScorer(), UniformLayerBudget(), UniformHeadBudget()
        ),
        CompressionMethod(
            "pyramidkv", budget, WINDOW, SnapKVScorer(), PyramidLayerBudget(), UniformHeadBudget()
        ),
        CompressionMethod("adakv", budget, WINDOW, SnapKVScorer(), UniformLayerBudget(), FlatHeadBudget(0.2)),
        CompressionMethod("lava", budget, WINDOW, LavaScorer(), EntropyLayerBudget(), FlatHeadBudget(0.2)),
    ]


def test_reference_logits_equal_one_uncompressed_forward(tiny):
    model, prompt, continuation = tiny
    model.set_attn_implementation("sdpa")
    ref = full_reference(model, prompt, continuation)
    with torch.no_grad():
        whole = model(input_ids=torch.cat([prompt, continuation[:-1]])[None]).logits[0, PROMPT:]
    torch.testing.assert_close(ref.logits, whole, rtol=1e-4, atol=1e-4)
    assert ref.m == M and len(ref.layers) == COMMON["num_hidden_layers"]
    # The NLL targets are the tokens after each fed position.
    expected = torch.nn.functional.cross_entropy(whole.double(), continuation[1:], reduction="none")
    torch.testing.assert_close(token_nll(ref.logits, continuation[1:]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index", range(4))
def test_nothing_evicted_means_perfect_fidelity(tiny, index):
    model, prompt, continuation = tiny
    method = methods(budget=PROMPT + 16)[index]
    scores, _ = measure(model, prompt, continuation, method.build_cache(model, M))
    assert scores["kl"] < 1e-9
    assert scores["top1"] == 1.0
    assert abs(scores["nll_delta"]) < 1e-5
    assert max(scores["attn_err_per_layer"]) < 1e-5


def test_full_cache_is_exactly_the_reference(tiny):
    model, prompt, continuation = tiny
    model.set_attn_implementation("sdpa")
    scores, _ = measure(model, prompt, continuation, DynamicCache(config=model.config))
    assert scores["kl"] == 0.0 and scores["top1"] == 1.0 and scores["nll_delta"] == 0.0
    assert max(scores["attn_err_per_layer"]) < 1e-5


@pytest.mark.parametrize("index", range(4))
def test_reference_from_the_methods_prefill_equals_a_separate_one(tiny, index):
    model, prompt, continuation = tiny
    method = methods(budget=16)[index]
    shared, _ = measure(model, prompt, continuation, method.build_cache(model, M))
    cache = method.build_cache(model, M)
    ref = full_reference(model, prompt, continuation)
    with torch.no_grad():
        model(input_ids=prompt[None], past_key_values=cache, use_cache=True)
    separate = compare(model, ref, cache)
    for key in ("kl", "top1", "nll_delta", "attn_err"):
        assert shared[key] == pytest.approx(separate[key], rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("index", range(4))
def test_small_budget_moves_every_measure(tiny, index):
    model, prompt, continuation = tiny
    method = methods(budget=12)[index]
    scores, seconds = measure(model, prompt, continuation, method.build_cache(model, M))
    assert scores["kl"] > 1e-6
    assert min(scores["attn_err_per_layer"]) > 1e-4
    assert 0.0 <= scores["top1"] <= 1.0
    assert set(seconds) == {"prefill_seconds", "reference_seconds", "decode_seconds"}


CONFIG_METHODS = compressing_methods()  # the registry


@pytest.fixture(scope="module")
def smollm2_sample(smollm2):
    model, tok = smollm2
    ids = tok.encode("The cat sat on the mat and looked at the moon, then went to sleep. " * 8)
    return model, ids[:-9], ids[-9:]


@pytest.mark.parametrize("name", CONFIG_METHODS)
def test_smollm2_every_configured_method_is_exact_when_nothing_is_evicted(smollm2_sample, name):
    from eval.method_configs import build_named_method

    model, prompt, continuation = smollm2_sample
    method = build_named_method(name, len(prompt) + 8)
    scores, _ = measure(model, prompt, continuation, method.build_cache(model, 8))
    assert scores["kl"] < 1e-8 and scores["top1"] == 1.0 and abs(scores["nll_delta"]) < 1e-4
    assert max(scores["attn_err_per_layer"]) < 1e-4


def _prefilled(model, prompt, budget: int) -> list:
    """Every test method's cache and a full ``DynamicCache``, each prefilled with ``prompt``."""
    from lava.attention import enable

    caches = [m.build_cache(model, M) for m in methods(budget)] + [DynamicCache(config=model.config)]
    enable(model)
    with torch.no_grad():
        for cache in caches:
            model(input_ids=prompt[None], past_key_values=cache, use_cache=True)
    return caches


@pytest.mark.parametrize("max_batch", [1, 3, 32])
def test_batched_comparison_equals_one_cache_at_a_time(tiny, max_batch):
    from eval.benchmarks.fidelity import compare_many

    model, prompt, continuation = tiny
    ref = full_reference(model, prompt, continuation)
    one_by_one = [compare(model, ref, cache) for cache in _prefilled(model, prompt, budget=12)]
    batched = compare_many(model, ref, _prefilled(model, prompt, budget=12), max_batch=max_batch)
    assert len(batched) == len(one_by_one) == 5
    for (scores, seconds), expected in zip(batched, one_by_one):
        assert seconds > 0
        # The batch attends through one padded kernel, one cache alone through its packed rows: the
        # same sums in another order (fp32 softmax), so NLLs of ~5 nats agree to ~1e-7, not bit for bit.
        for key in ("kl", "top1", "nll_delta", "attn_err"):
            assert scores[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
        # computed before the forward appends to the cache, from the same inputs
        assert scores["attn_err_per_layer"] == pytest.approx(
            expected["attn_err_per_layer"], rel=1e-5, abs=1e-8
        )
    assert batched[-1][0]["kl"] < 1e-8  # the full cache, in its own forward
    assert len({round(s["kl"], 6) for s, _ in batched[:-1]}) > 1  # the rows did not get each other's cache
