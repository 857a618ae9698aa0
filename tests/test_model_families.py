"""The compressed cache on tiny random models of every supported family (docs/methods.md, "The common frame").

Llama (GQA 4/2), Mistral (GQA 8/2), Qwen2 (MHA 4/4, q/k/v biases) and Qwen3 (GQA 9/3, q/k norms),
two layers each, on CPU in fp32:

(a) with ``budget >= prompt length`` nothing is evicted, so greedy decoding (a hand-written loop and
    ``model.generate(past_key_values=cache)``) is token-identical to a ``DynamicCache`` run, with
    matching logits at every step;
(b) with a small budget the cache really evicts, generation runs through both paths, the logical
    length (``get_seq_length``) is the uncompressed one, and the prefill logits equal the full-cache
    prefill logits (prefill attention is full).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from lava.allocation import EntropyLayerBudget, FlatHeadBudget, UniformHeadBudget, UniformLayerBudget
from lava.cache import CompressedCache
from lava.method import CompressionMethod
from lava.scorers.lava import LavaScorer
from lava.scorers.snapkv import SnapKVScorer

NEW_TOKENS = 8
COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    vocab_size=128,
    num_hidden_layers=2,
    max_position_embeddings=256,
    initializer_range=0.1,
)


def _config(family: str):
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, head_dim=16, **COMMON)
    if family == "mistral":
        return tf.MistralConfig(
            num_attention_heads=8, num_key_value_heads=2, head_dim=8, sliding_window=None, **COMMON
        )
    if family == "qwen2":
        return tf.Qwen2Config(num_attention_heads=4, num_key_value_heads=4, **COMMON)
    if family == "qwen3":
        return tf.Qwen3Config(num_attention_heads=9, num_key_value_heads=3, head_dim=8, **COMMON)
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(FAMILIES.index(request.param))
    config = _config(request.param)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # random weights: always decode NEW_TOKENS tokens
    return request.param, model


def lava_method(budget: int, window: int) -> CompressionMethod:
    return CompressionMethod(
        "lava", budget, window, LavaScorer(), EntropyLayerBudget(), FlatHeadBudget(0.2, "exact")
    )


def snapkv_method(budget: int, window: int) -> CompressionMethod:
    return CompressionMethod(
        "snapkv", budget, window, SnapKVScorer(), UniformLayerBudget(), UniformHeadBudget()
    )


def prompt(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def greedy_loop(model, ids: torch.Tensor, cache, steps: int = NEW_TOKENS):
    """Prefill, then feed the argmax token one step at a time; returns (tokens, per-step logits)."""
    out = model(ids, past_key_values=cache, use_cache=True)
    logits = [out.logits[0, -1]]
    tokens = []
    for _ in range(steps):
        token = logits[-1].argmax().view(1, 1)
        tokens.append(int(token))
        out = model(token, past_key_values=cache, use_cache=True)
        logits.append(out.logits[0, -1])
    return tokens, torch.stack(logits)


@torch.no_grad()
def generate(model, ids: torch.Tensor, cache=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # `past_key_values` is being renamed to `cache`
        kwargs = {} if cache is None else {"past_key_values": cache}
        return model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS, **kwargs)


def full_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def kv_heads(model) -> int:
    return model.config.num_key_value_heads


@pytest.mark.parametrize("n", [1, 5, 20])
@pytest.mark.parametrize("make", [lava_method, snapkv_method], ids=["lava", "snapkv"])
def test_no_eviction_is_token_identical_to_dynamic_cache(family_model, make, n):
    family, model = family_model
    ids = prompt(n, seed=n)
    model.set_attn_implementation("sdpa")
    ref_tokens, ref_logits = greedy_loop(model, ids, full_cache(model))
    ref_generated = generate(model, ids)

    method = make(budget=24, window=4)
    cache = method.build_cache(model, max_new_tokens=NEW_TOKENS)
    assert model.config._attn_implementation == "lava"
    tokens, logits = greedy_loop(model, ids, cache)
    assert tokens == ref_tokens
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert not cache.compressed
    assert cache.kept_per_head() == [[n] * kv_heads(model)] * model.config.num_hidden_layers
    assert cache.get_seq_length() == n + NEW_TOKENS

    cache = method.build_cache(model, max_new_tokens=NEW_TOKENS)
    generated = generate(model, ids, cache)
    assert torch.equal(generated, ref_generated)
    assert generated.shape[1] == n + NEW_TOKENS
    assert cache.get_seq_length() == n + NEW_TOKENS - 1  # the last token is returned, not fed back


@pytest.mark.parametrize("make", [lava_method, snapkv_method], ids=["lava", "snapkv"])
def test_small_budget_compresses_and_generates(family_model, make):
    family, model = family_model
    n, budget, window = 60, 16, 4
    layers, heads = model.config.num_hidden_layers, kv_heads(model)
    ids = prompt(n, seed=99)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        full_logits = model(ids, past_key_values=full_cache(model), use_cache=True).logits

    method = make(budget=budget, window=window)
    cache = method.build_cache(model, max_new_tokens=NEW_TOKENS)
    with torch.no_grad():
        prefill_logits = model(ids, past_key_values=cache, use_cache=True).logits
    # prefill attention is full (the same SDPA over the same tensors): eviction only changes what is stored
    assert torch.equal(prefill_logits, full_logits)

    report = cache.report()
    assert cache.compressed and report["compressed"]
    assert report["kept_entries"] < layers * heads * n
    assert report["kept_entries"] <= layers * heads * budget
    for per_layer in cache.kept_per_head():
        assert len(per_layer) == heads and min(per_layer) >= window
    assert cache.get_seq_length() == n

    # decode through the compressed cache: the logical length keeps counting every token
    tokens, logits = greedy_loop(model, ids, method.build_cache(model, max_new_tokens=2), steps=NEW_TOKENS)
    assert torch.isfinite(logits).all()
    cache = method.build_cache(model, max_new_tokens=2)  # a small reserve: the tail has to grow
    loop_tokens, _ = greedy_loop(model, ids, cache, steps=NEW_TOKENS)
    assert cache.get_seq_length() == n + NEW_TOKENS
    assert loop_tokens == tokens
    assert cache.report()["kept_entries"] == report["kept_entries"]  # the tail is not prompt storage

    cache = method.build_cache(model, max_new_tokens=NEW_TOKENS)
    generated = generate(model, ids, cache)
    assert generated.shape == (1, n + NEW_TOKENS)
    assert generated[0, n:].tolist() == tokens  # generate() and the hand loop agree on the compressed cache
    assert cache.get_seq_length() == n + NEW_TOKENS - 1


def test_compressed_cache_rejects_batches_and_non_lava_attention():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config("llama"), attn_implementation="sdpa").eval()
    method = lava_method(16, 4)
    with pytest.raises(ValueError, match="batch size 1"), torch.no_grad():
        model(prompt(10, 1).repeat(2, 1), past_key_values=method.build_cache(model))
    # a cache built by hand on a model still using sdpa: prefill is never compressed -> clear error on decode
    model.set_attn_implementation("sdpa")
    cache = CompressedCache(method, model.config.num_hidden_layers)
    with torch.no_grad():
        model(prompt(10, 1), past_key_values=cache, use_cache=True)
        with pytest.raises(RuntimeError, match="attn_implementation='lava'"):
            model(prompt(1, 2), past_key_values=cache, use_cache=True)
