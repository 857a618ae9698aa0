"""With budget >= prompt length every method must reproduce full-cache greedy output token for token.

Nothing is evicted then, so the only difference is the attention path (packed per-head cache vs
SDPA over a DynamicCache); both are exact, so greedy tokens must agree. Checked through the
runner's greedy loop and through ``model.generate(past_key_values=...)``.
"""

import pytest
import torch
from transformers import DynamicCache

from eval.generation import greedy_generate
from eval.method_configs import build_named_method, compressing_methods

METHODS = compressing_methods()  # the registry: a new configs/method/*.yaml is tested here unedited
NEW_TOKENS = 12


def build_method(name: str, budget: int):
    return build_named_method(name, budget)


@pytest.fixture(scope="module")
def prompt(smollm2):
    _, tok = smollm2
    text = "Here is a short story. " + "The cat sat on the mat and looked at the moon. " * 12
    text += "Question: where did the cat sit? Answer:"
    return torch.tensor([tok.encode(text)])


@pytest.fixture(scope="module")
def full_tokens(smollm2, prompt):
    model, _ = smollm2
    model.set_attn_implementation("sdpa")
    gen = greedy_generate(
        model,
        prompt,
        max_new_tokens=NEW_TOKENS,
        stop_ids=[],
        cache=DynamicCache(config=model.config),
        min_new_tokens=0,
    )
    return gen.token_ids


@pytest.fixture(scope="module")
def full_generate_tokens(smollm2, prompt):
    model, _ = smollm2
    model.set_attn_implementation("sdpa")
    out = model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0, prompt.shape[1] :].tolist()


def test_every_method_of_the_registry_is_tested():
    assert set(METHODS) >= {"snapkv", "pyramidkv", "adakv", "cake", "lava", "streamingllm"}
    assert "full" not in METHODS


@pytest.mark.parametrize("name", METHODS)
def test_runner_loop_identical_to_full(smollm2, prompt, full_tokens, name):
    model, _ = smollm2
    method = build_method(name, budget=4096)
    assert prompt.shape[1] <= method.budget
    cache = method.build_cache(model, max_new_tokens=NEW_TOKENS)
    gen = greedy_generate(
        model, prompt, max_new_tokens=NEW_TOKENS, stop_ids=[], cache=cache, min_new_tokens=0
    )
    assert gen.token_ids == full_tokens
    assert cache.report()["kept_entries"] == 30 * 3 * prompt.shape[1]  # nothing evicted


@pytest.mark.parametrize("name", ["lava", "adakv"])
def test_generate_identical_to_full(smollm2, prompt, full_generate_tokens, name):
    model, _ = smollm2
    method = build_method(name, budget=4096)
    out = model.generate(
        prompt,
        past_key_values=method.build_cache(model, max_new_tokens=NEW_TOKENS),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
    )
    assert out[0, prompt.shape[1] :].tolist() == full_generate_tokens


def test_compressed_generate_matches_runner_loop(smollm2, prompt):
    """With real eviction, generate() and the runner's loop use the same cache logic: same tokens."""
    model, _ = smollm2
    method = build_method("lava", budget=64)
    cache = method.build_cache(model, max_new_tokens=NEW_TOKENS)
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    # Stop tokens suppressed at every step on both sides, as generate(min_new_tokens=N) does.
    loop = greedy_generate(
        model, prompt, max_new_tokens=NEW_TOKENS, stop_ids=eos, cache=cache, min_new_tokens=NEW_TOKENS
    )
    assert cache.compressed and cache.report()["kept_entries"] <= 30 * 3 * 64
    out = model.generate(
        prompt,
        past_key_values=method.build_cache(model, max_new_tokens=NEW_TOKENS),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
    )
    assert out[0, prompt.shape[1] :].tolist() == loop.token_ids


@pytest.mark.parametrize("budget", [64, 4096])
@pytest.mark.parametrize("name", ["lava", "adakv", "snapkv", "cake"])
def test_padded_layout_gives_the_runner_loops_tokens(monkeypatch, smollm2, prompt, budget, name):
    """The CUDA decode layout (each KV head padded to the layer's longest, one SDPA per step), forced
    on the CPU in every layer: the same greedy tokens as the CPU layout, with and without eviction."""
    import lava.cache
    from lava.attention import force_decode_kernel

    model, _ = smollm2
    tokens = {}
    for kernel in ("masked-matmul", "sdpa-padded"):
        monkeypatch.setattr(lava.cache, "PAD_SLACK", 100.0)  # pad however uneven the heads are
        cache = build_method(name, budget).build_cache(model, max_new_tokens=4)  # grows past the reserve
        with force_decode_kernel(kernel):
            gen = greedy_generate(
                model, prompt, max_new_tokens=NEW_TOKENS, stop_ids=[], cache=cache, min_new_tokens=0
            )
        assert {layer.kernel for layer in cache.layers} == {kernel}
        tokens[kernel] = gen.token_ids
    assert tokens["sdpa-padded"] == tokens["masked-matmul"]
