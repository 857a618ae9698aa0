"""A swept configuration keeps exactly what its single run keeps and generates the same tokens.

For every method config at two budgets (and a layer allocator that is not monotone), on SmolLM2,
with prompts shorter and longer than the budgets: the single run (online compression inside the
prefill, batch-1 decode) is compared with the sweep (one shared prefill, caches built by the same
policy, all compressed configurations decoded as batches). Kept entries per layer and head must be
equal; tokens must be equal, except where the batched forward's float rounding flips a tie: then
the two top scores of the single run at that step must lie within 1e-4, and the case is counted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from transformers import DynamicCache

from eval.generation import greedy_generate
from eval.method_configs import build_named_method, compressing_methods
from eval.sweep import decode_all, shared_prefill
from lava.allocation import EntropyLayerBudget
from lava.models import newline_token_id
from lava.policy import scorer_key

BUDGETS = (64, 160)
NEW_TOKENS = 8
TIE = 1e-4
TIES: list[str] = []  # reported at the end of the module


@dataclass
class OnceEntropyBudget(EntropyLayerBudget):
    """LAVa's entropy allocation, declared non-monotone: allocated once after the last layer."""

    monotone = False


def build(name: str, budget: int):
    return build_named_method(name, budget)


@pytest.fixture(scope="module")
def methods():
    out = [build(name, b) for name in compressing_methods() for b in BUDGETS]
    out.append(replace(build("lava", 64), name="lava_once", layer_allocator=OnceEntropyBudget()))
    return out


def _prompts(tok) -> dict[str, list[int]]:
    story = "The cat sat on the mat and looked at the moon. The dog, named Rex, slept by the door. "
    return {
        "short": tok.encode("Name a colour of the sky. Answer:"),  # below every budget: nothing evicted
        "medium": tok.encode(
            story * 9 + "The passkey is 58213. " + story * 6 + "What is the passkey? Answer:"
        ),
        "long": tok.encode(story * 30 + "What is the dog's name? The dog's name is"),
    }


def _compare(tag: str, single_tokens, single_margins, swept_tokens) -> None:
    if single_tokens == swept_tokens:
        return
    step = next(i for i, (a, b) in enumerate(zip(single_tokens, swept_tokens)) if a != b)
    assert single_margins[step] <= TIE, f"{tag}: tokens differ at step {step} without a tie"
    TIES.append(f"{tag} step {step} margin {single_margins[step]:.2e}")


def test_sweep_equals_single_runs(smollm2, methods):
    model, tok = smollm2
    stops = [newline_token_id(tok), tok.eos_token_id]
    stopped_early = kept_compared = 0
    for label, ids in _prompts(tok).items():
        input_ids = torch.tensor([ids])
        singles = []
        for method in methods:
            cache = method.build_cache(model, NEW_TOKENS)
            gen = greedy_generate(
                model, input_ids, max_new_tokens=NEW_TOKENS, stop_ids=stops, cache=cache, min_new_tokens=0
            )
            singles.append((gen, cache.report()))
        full = greedy_generate(
            model,
            input_ids,
            max_new_tokens=NEW_TOKENS,
            stop_ids=stops,
            cache=DynamicCache(config=model.config),
            min_new_tokens=0,
        )
        swept_methods = [None, *methods]
        prefill = shared_prefill(model, input_ids, swept_methods, NEW_TOKENS)
        # Scorers run once per sample: the SnapKV family shares one, LAVa and its ablations one.
        keys = {m.name: scorer_key(m) for m in methods}
        assert keys["snapkv"] == keys["pyramidkv"] == keys["adakv"]
        assert keys["lava"] == keys["lava_layer_only"] == keys["lava_head_only"]
        if len(ids) > max(BUDGETS):
            assert len(prefill.seconds["scoring"]) == len(set(keys.values()) | {scorer_key(methods[-1])})
        gens = decode_all(model, prefill, swept_methods, NEW_TOKENS, stops, 0, max_batch=7)
        _compare(f"{label}/full", full.token_ids, full.margins, gens[0].token_ids)
        for method, (single, report), cache, gen in zip(methods, singles, prefill.caches[1:], gens[1:]):
            tag = f"{label}/{method.name}-b{method.budget}"
            assert cache.report() == report, tag  # kept per layer and head, bytes, compressed flag
            assert report["compressed"] == (len(ids) > method.budget), tag
            kept_compared += 1
            _compare(tag, single.token_ids, single.margins, gen.token_ids)
            stopped_early += single.stop_reason == "stop_token"
    assert kept_compared == 3 * len(methods)
    assert stopped_early > 0, "no configuration stopped early: the stop path is untested"
    print(f"\nfloat ties: {len(TIES)} of {kept_compared + 3} generations: {TIES}")


def _first_layer_pending(model, method, input_ids) -> tuple[list[bool], object]:
    """Per compress_layer call: whether layer 0 still holds its uncompressed prompt afterwards."""
    cache = method.build_cache(model, 2)
    pending = []
    compress = cache.compress_layer

    def spy(*args):
        compress(*args)
        pending.append(cache.layers[0].full_keys is not None)

    cache.compress_layer = spy
    greedy_generate(model, input_ids, max_new_tokens=2, stop_ids=[], cache=cache, min_new_tokens=0)
    return pending, cache


def test_non_monotone_allocator_allocates_once(smollm2, methods):
    """With ``monotone = False`` every layer waits for the last one; budgets are one call over all layers."""
    model, tok = smollm2
    method = methods[-1]
    input_ids = torch.tensor([_prompts(tok)["long"]])
    pending, cache = _first_layer_pending(model, method, input_ids)
    num_layers = len(cache.layers)
    assert pending == [True] * (num_layers - 1) + [False]
    prefix = input_ids.shape[1] - method.window
    expected = EntropyLayerBudget().allocate(
        cache.stats, [prefix] * num_layers, num_layers, method.budget - method.window
    )
    assert cache.layer_budgets == expected
    online, _ = _first_layer_pending(model, build("lava", 64), input_ids)
    assert online == [False] * num_layers  # the monotone scheme stores each layer at once


def test_multi_token_forward_matches_step_by_step(smollm2, methods):
    """A q > 1 forward (teacher forcing) through a compressed cache uses the cached prompt mask; its
    logits equal feeding the same tokens one by one (causal among the new tokens)."""
    from lava.compat import cache_kwargs

    model, tok = smollm2
    input_ids = torch.tensor([_prompts(tok)["long"]])
    continuation = torch.tensor([tok.encode(" Rex is a very good dog who likes to sleep")])
    method = methods[0]
    logits = []
    for chunks in ([continuation], list(continuation.split(1, dim=1))):
        cache = method.build_cache(model, 2)  # a small reserve: the tail grows while feeding
        with torch.inference_mode():
            model(input_ids=input_ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
            out = [model(input_ids=c, **cache_kwargs(model, cache), use_cache=True).logits for c in chunks]
        logits.append(torch.cat(out, dim=1))
    assert logits[0].shape[1] == continuation.shape[1] > 4
    torch.testing.assert_close(logits[0], logits[1], atol=2e-4, rtol=1e-4)


def test_padded_layout_sweep_equals_single_runs(monkeypatch, smollm2):
    """The CUDA layout forced on the CPU (every layer padded): single runs against a sweep whose batch
    takes the caches' buffers (``on_done`` given, as the runner does). Same kept entries and bytes
    reported after the batch released the members, same tokens."""
    import lava.cache
    from lava.attention import force_decode_kernel

    model, tok = smollm2
    monkeypatch.setattr(lava.cache, "PAD_SLACK", 100.0)
    stops = [newline_token_id(tok), tok.eos_token_id]
    input_ids = torch.tensor([_prompts(tok)["long"]])
    methods = [build("lava", 64), build("adakv", 64), build("snapkv", 160), build("cake_cascading", 64)]
    with force_decode_kernel("sdpa-padded"):
        singles = []
        for method in methods:
            cache = method.build_cache(model, NEW_TOKENS)
            gen = greedy_generate(
                model, input_ids, max_new_tokens=NEW_TOKENS, stop_ids=stops, cache=cache, min_new_tokens=0
            )
            assert {layer.kernel for layer in cache.layers} == {"sdpa-padded"}
            singles.append((gen, cache.report()))
        prefill = shared_prefill(model, input_ids, methods, NEW_TOKENS)
        reports: dict[int, dict] = {}

        def on_done(index, gen, cache):
            assert all(layer.keys is None for layer in cache.layers)  # the batch took the buffers
            reports[index] = cache.report()

        gens = decode_all(model, prefill, methods, NEW_TOKENS, stops, 0, max_batch=4, on_done=on_done)
    for i, (method, (single, report), gen) in enumerate(zip(methods, singles, gens)):
        tag = f"padded/{method.name}-b{method.budget}"
        assert reports[i] == report, tag
        _compare(tag, single.token_ids, single.margins, gen.token_ids)
