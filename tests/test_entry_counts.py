"""Entry counts of the layer allocators on the embedded SmolLM2 (30 layers, 3 KV heads), as docs/methods.md
states them: a 1467-token prompt (the first tokens of the Paul Graham essays) at B0 = 128, w = 32.

* CAKE (official even redistribution) keeps exactly L x Hkv x B0 = 11,520 entries, with the layer
  budgets of the loop reference computed from the cache's own preferences;
* PyramidKV keeps 11,478 with the floored schedule and 11,970 with ``schedule=upstream``.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_cake_budgets import ref_cake_adjust_budgets

from eval.method_configs import method_node
from lava.compat import cache_kwargs

PROMPT_TOKENS, BUDGET, WINDOW = 1467, 128, 32


def build(name: str, **overrides):
    root = OmegaConf.create({"budget": BUDGET, "model": {"name": "smollm2-135m"}})
    root.method = method_node(name)
    for key, value in overrides.items():
        OmegaConf.update(root, f"method.{key}", value)
    return instantiate(root.method, _convert_="all")


@pytest.fixture(scope="module")
def prompt(smollm2):
    from eval.benchmarks.haystack import paul_graham_essays

    _, tokenizer = smollm2
    ids = tokenizer.encode(paul_graham_essays()[:20_000], add_special_tokens=False)[:PROMPT_TOKENS]
    assert len(ids) == PROMPT_TOKENS
    return torch.tensor([ids])


def prefill(smollm2, prompt, method):
    model, _ = smollm2
    cache = method.build_cache(model, max_new_tokens=1)
    with torch.no_grad():
        model(prompt, use_cache=True, **cache_kwargs(model, cache))
    return cache


def test_cake_keeps_exactly_the_budget(smollm2, prompt):
    cache = prefill(smollm2, prompt, build("cake"))
    assert cache.report()["kept_entries"] == 30 * 3 * BUDGET == 11_520
    prefix = PROMPT_TOKENS - WINDOW
    assert cache.layer_budgets == ref_cake_adjust_budgets(cache.stats, prefix, 30, BUDGET - WINDOW)


@pytest.mark.parametrize(("schedule", "entries"), [("floor", 11_478), ("upstream", 11_970)])
def test_pyramidkv_schedules(smollm2, prompt, schedule, entries):
    cache = prefill(smollm2, prompt, build("pyramidkv", **{"layer_allocator.schedule": schedule}))
    assert cache.report()["kept_entries"] == entries
