"""Device correctness by construction (docs: DESIGN.md, "Devices"), checked on a CPU.

Every tensor of the compression and decode paths must be created on the device of the tensors it
is computed from. On a machine without an accelerator this is testable by making another device
the default: with ``torch.set_default_device("meta")`` while the model, the prompt and therefore
every input live on the CPU, a tensor created without ``device=`` lands on ``meta`` and the first
operation mixing it with a CPU tensor fails (on a GPU the same omission is a crash or a host copy
with a synchronisation). The models are built on the CPU before the switch; only the library calls
run under it.

Covered, for every compressing ``configs/method/*.yaml`` at a budget below the prompt (evicting)
and one at or above it (everything kept):

* scoring, layer and head allocation and cache building from a shared prefill
  (:func:`lava.prefill.capture_prefill`, :func:`~lava.prefill.score_methods`,
  :func:`~lava.prefill.build_cache_from_capture`), on an 8-layer model where LAVa's entropy allocation lowers the
  caps of earlier layers as later layers arrive;
* a single run: online compression inside the model's forward (``attn_implementation="lava"``)
  and its batch-1 decode;
* a batched decode (:func:`eval.generation.greedy_decode` over several caches, a
  :class:`lava.batch.BatchedCache`, rows leaving at stop tokens), a teacher-forced forward of several
  tokens through a batch, and a sweep step (:func:`eval.sweep.shared_prefill` +
  :func:`~eval.sweep.decode_all`, the full cache included).

Each case is also run with the ordinary default device and must give the same kept entries,
tokens, margins and logits: the check is on behaviour, not only on the absence of errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from eval.generation import greedy_decode, greedy_generate
from eval.method_configs import build_named_method, compressing_methods
from eval.sweep import decode_all, shared_prefill
from lava.batch import BatchedCache
from lava.compat import cache_kwargs
from lava.policy import BudgetPlan, scorer_key
from lava.prefill import build_cache_from_capture, capture_prefill, capture_queries, score_methods

METHODS = compressing_methods()  # a new method config is covered here unedited
PROMPT = 100  # tokens; the configs fix window = 32
CAPPING, FITTING = 48, 128  # budget < prompt (evicts) and budget >= prompt (keeps everything)
BUDGETS = (CAPPING, FITTING)
LAYERS = 8
NEW_TOKENS = 6
# Layer allocators that lower an earlier layer's caps when a later layer arrives (online water-filling
# or cascading); with 8 layers and this prompt they must actually do it, or the test misses that path.
LOWERING = {"lava", "lava_layer_only", "cake_cascading"}


@contextmanager
def foreign_default_device() -> Iterator[None]:
    """Make ``meta`` the default device for the block; the ordinary default is restored even on failure."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.fixture(autouse=True)
def restore_default_device() -> Iterator[None]:
    """No test of this module may leave a foreign default behind for the rest of the suite."""
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_hidden_layers=LAYERS,
        vocab_size=64,
        max_position_embeddings=256,
        initializer_range=0.2,  # large weights: diverse tokens, so rows stop at different steps
    )
    with torch.device("cpu"):
        torch.manual_seed(0)
        tiny = LlamaForCausalLM(config).eval()
    tiny.generation_config.eos_token_id = None
    return tiny


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return torch.randint(0, 64, (1, PROMPT), generator=torch.Generator().manual_seed(1), device="cpu")


def kept_positions(cache) -> list[list[list[int]]]:
    """Per layer and KV head, the prompt positions the cache stores."""
    return [[p.tolist() for p in layer.positions] for layer in cache.layers]


def assert_on_cpu(cache) -> None:
    """Every stored buffer, index and cap of a compressed cache lives where its inputs do."""
    for layer in cache.layers:
        for tensor in (layer.keys, layer.values, layer.row_head, layer.row_pos, layer.prefix_kept):
            assert tensor is None or tensor.device.type == "cpu"
    for caps in cache.plan.caps:
        assert caps is None or caps.device.type == "cpu"


# -- scoring, allocation, cache building --------------------------------------------------------------------


def shared_build(model, prompt, method) -> tuple[list, list, int]:
    """Capture, score, replay the allocation layer by layer, build the cache.

    Returns the kept positions, the final caps and how many times a later layer lowered an earlier
    layer's caps."""
    capture, _ = capture_prefill(model, prompt, capture_queries([method]))
    scored, _ = score_methods(capture, [method])
    layers = scored.get(scorer_key(method))
    lowered = 0
    if layers is not None:
        plan = BudgetPlan(method, len(layers))
        for index, layer in enumerate(layers):
            before = [None if c is None else c.clone() for c in plan.caps]
            for j in plan.add(layer):
                if j < index and before[j] is not None and bool((plan.caps[j] < before[j]).any()):
                    lowered += 1
    cache = build_cache_from_capture(method, capture, layers, reserve=NEW_TOKENS)
    assert_on_cpu(cache)
    caps = [c.tolist() for c in cache.plan.caps] if layers is not None else []
    return kept_positions(cache), caps, lowered


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", METHODS)
def test_scoring_allocation_and_building(model, prompt, name, budget):
    method = build_named_method(name, budget)
    expected = shared_build(model, prompt, method)
    with foreign_default_device():
        kept, caps, lowered = shared_build(model, prompt, method)
    assert (kept, caps, lowered) == expected
    if budget < PROMPT:
        assert len(caps) == LAYERS
        assert sum(len(head) for layer in kept for head in layer) < LAYERS * 2 * PROMPT  # evicted
        if name in LOWERING:
            assert lowered > 0, f"{name}: no later layer lowered an earlier layer's caps"
    else:
        assert kept == [[list(range(PROMPT))] * 2] * LAYERS  # everything kept


# -- a single run: online compression in the forward, batch-1 decode ---------------------------------------


def single_run(model, prompt, method):
    cache = method.build_cache(model, max_new_tokens=NEW_TOKENS)
    gen = greedy_generate(
        model, prompt, max_new_tokens=NEW_TOKENS, stop_ids=[], cache=cache, min_new_tokens=0
    )
    assert_on_cpu(cache)
    return gen.token_ids, gen.margins, kept_positions(cache)


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", METHODS)
def test_single_run_online_compression(model, prompt, name, budget):
    method = build_named_method(name, budget)
    expected = single_run(model, prompt, method)
    with foreign_default_device():
        got = single_run(model, prompt, method)
    assert got == expected
    assert len(got[0]) == NEW_TOKENS


# -- batched decode, teacher forcing, sweep ------------------------------------------------------------------


def built_caches(model, prompt, methods):
    capture, logits = capture_prefill(model, prompt, capture_queries(methods))
    scored, _ = score_methods(capture, methods)
    caches = [build_cache_from_capture(m, capture, scored.get(scorer_key(m)), NEW_TOKENS) for m in methods]
    capture.release()
    return logits, caches


def batched_decode(model, prompt, methods, stops):
    logits, caches = built_caches(model, prompt, methods)
    gens = greedy_decode(model, logits, caches, NEW_TOKENS, stops, min_new_tokens=2)
    return [(g.token_ids, g.stop_reason, g.margins) for g in gens]


def a_stop_that_splits(rows: list[list[int]]) -> int:
    """A token that one row first produces at a step >= 2 (after the suppression) and another row never
    produces: with it as the stop token, rows leave the batch at different steps."""
    for token in range(64):
        stops = any(token in row[2:] and token not in row[:2] for row in rows)
        if stops and any(token not in row for row in rows):
            return token
    raise AssertionError(f"no token splits the rows {rows}")


@pytest.mark.parametrize("budget", BUDGETS)
def test_batched_decode(model, prompt, budget):
    methods = [build_named_method(name, budget) for name in METHODS]
    free = [tokens for tokens, _, _ in batched_decode(model, prompt, methods, [])]
    if budget >= PROMPT:  # nothing evicted: every row is the full cache and all stop together
        assert all(tokens == free[0] for tokens in free)
        stop, reasons = free[0][2], {"stop_token"}
    else:
        stop, reasons = a_stop_that_splits(free), {"stop_token", "length"}
    expected = batched_decode(model, prompt, methods, [stop])
    assert {reason for _, reason, _ in expected} == reasons
    with foreign_default_device():
        got = batched_decode(model, prompt, methods, [stop])
    assert got == expected


def teacher_forced(model, prompt, methods, continuation):
    _, caches = built_caches(model, prompt, methods)
    batch = BatchedCache(caches)
    ids = continuation.expand(len(caches), -1)
    with torch.inference_mode():
        return model(input_ids=ids, **cache_kwargs(model, batch), use_cache=True).logits


@pytest.mark.parametrize("budget", BUDGETS)
def test_teacher_forced_batch(model, prompt, budget):
    methods = [build_named_method(name, budget) for name in METHODS]
    continuation = torch.tensor([[5, 17, 42]], device="cpu")
    expected = teacher_forced(model, prompt, methods, continuation)
    with foreign_default_device():
        got = teacher_forced(model, prompt, methods, continuation)
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def sweep_step(model, prompt, methods):
    prefill = shared_prefill(model, prompt, methods, NEW_TOKENS)
    for cache, method in zip(prefill.caches, methods):
        if method is not None:
            assert_on_cpu(cache)
    kept = [kept_positions(c) for c, m in zip(prefill.caches, methods) if m is not None]
    gens = decode_all(model, prefill, methods, NEW_TOKENS, [], 1, max_batch=4)
    return kept, [(g.token_ids, g.stop_reason, g.margins) for g in gens]


@pytest.mark.parametrize("budget", BUDGETS)
def test_sweep_step(model, prompt, budget):
    methods = [build_named_method(name, budget) for name in METHODS] + [None]  # None: the full cache
    expected = sweep_step(model, prompt, methods)
    with foreign_default_device():
        got = sweep_step(model, prompt, methods)
    assert got == expected
    assert all(len(tokens) == NEW_TOKENS for tokens, _, _ in got[1])
