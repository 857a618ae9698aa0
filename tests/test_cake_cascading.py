"""CAKE with official ``use_cascading`` against a loop transcription of the upstream logic.

Upstream (antgroup/cakekv, ``cake/cake_cache.py``, ``CakeprefillKVCache.__call__`` with
``use_cascading=True``, and ``cake/utils.py`` ``adjust_budgets``), after the prefill of each layer:

1. shares ``pref_j / sum(pref of the layers seen so far) * total`` for every seen layer ``j``, where
   ``total = (B0 - w) * L`` is the *whole* model's budget (``self.total_size``), not the seen layers';
2. ``adjust_budgets``: truncate to integers, clamp to the prefix ``P`` and spread the clamped surplus
   evenly over the layers below ``P`` (remainder to the lowest indices), then spread the rounding
   deficit ``total - sum`` the same way;
3. every seen layer is evicted to ``min(budget, P)``: the top-``budget`` of its scores, taken among
   the entries it still holds (``if budget > hh_score.shape[-1]: budget = hh_score.shape[-1]``), so a
   layer never grows back; the window is always kept.

The reference below does these steps in plain Python, one layer at a time. Two generalisations,
both stated: each layer has its own prefix ``P_l`` (upstream has one ``seq_len`` for all layers; per
layer it is the same rule), and when every seen preference is zero the split is uniform (upstream
divides by zero there; the project's documented fallback). Our side is
``PreferenceLayerBudget(cascading=True)`` driven by :class:`lava.policy.BudgetPlan`, compared step by
step, and a :class:`~lava.cache.CompressedCache` built from ``configs/method/cake_cascading.yaml`` on a
tiny random Llama, compared entry by entry, with its stored rows bounded at every layer.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from eval.method_configs import build_named_method, compressing_methods
from lava.allocation import PreferenceLayerBudget, UniformHeadBudget
from lava.cache import SHRINK_SLACK
from lava.compat import cache_kwargs
from lava.method import CompressionMethod
from lava.policy import BudgetPlan, ScoredLayer
from lava.scorers import CakeScorer

# ------------------------------------------------------------------------------------------ reference


def ref_adjust_budgets(shares: list[float], prefixes: list[int], total: int) -> list[int]:
    """Upstream ``adjust_budgets`` with a prefix per layer, then the eviction's clamp to ``P_l``."""
    budgets = [int(s) for s in shares]  # numpy's dtype=int truncates toward zero
    surplus = 0
    for i in range(len(budgets)):
        if budgets[i] > prefixes[i]:
            surplus += budgets[i] - prefixes[i]
            budgets[i] = prefixes[i]
    if surplus > 0:
        receivers = [i for i in range(len(budgets)) if budgets[i] < prefixes[i]]
        if receivers:
            for i in receivers:
                budgets[i] += surplus // len(receivers)
            for i in receivers[: surplus % len(receivers)]:
                budgets[i] += 1
    deficit = total - sum(budgets)
    assert deficit >= 0  # upstream's "too many" branch (take from layers above 1) is never reached
    if deficit > 0:
        receivers = [i for i in range(len(budgets)) if budgets[i] < prefixes[i]]
        if receivers:
            for i in receivers:
                budgets[i] += deficit // len(receivers)
            for i in receivers[: deficit % len(receivers)]:
                budgets[i] += 1
    return [min(budgets[i], prefixes[i]) for i in range(len(budgets))]  # `if budget >= P: budget = P`


def ref_cascading(prefs: list[float], prefixes: list[int], num_layers: int, b: int) -> list[dict]:
    """Per step (after layer ``l``'s prefill): the budgets upstream derives and the entries each seen
    layer then holds (beyond the window, per head)."""
    total = num_layers * b
    held: list[int] = []
    steps = []
    for layer in range(len(prefs)):
        held.append(prefixes[layer])  # the new layer holds its whole prompt until it is evicted
        seen = prefs[: layer + 1]
        weight_sum = sum(seen)
        if weight_sum > 0:
            shares = [p / weight_sum * total for p in seen]
        else:
            shares = [total / len(seen)] * len(seen)
        budgets = ref_adjust_budgets(shares, prefixes[: layer + 1], total)
        for j in range(layer + 1):
            held[j] = min(budgets[j], held[j])  # top-k over what the layer still holds: never grows
        steps.append({"budgets": budgets, "held": list(held)})
    return steps


def ref_kept_positions(step_held: list[int], scores: list[list[float]], window: int) -> list[list[int]]:
    """One layer's kept positions per head: evicted step by step to the held counts, each time keeping
    the top of what remains by score (ties: lower position), then the window."""
    prefix = len(scores[0])
    out = []
    for head_scores in scores:
        kept = list(range(prefix))
        for count in step_held:
            kept = sorted(kept, key=lambda p, s=head_scores: (-s[p], p))[:count]
        out.append(sorted(kept) + list(range(prefix, prefix + window)))
    return out


# ------------------------------------------------------------------------------------------ our side


def plan_steps(prefs: list[float], prefixes: list[int], num_layers: int, b: int, window: int = 4):
    """Feed ``BudgetPlan`` one layer at a time; per step, our allocator's budgets for the seen layers
    and the caps the plan holds for each of them."""
    method = CompressionMethod(
        "cake_cascading",
        b + window,
        window,
        CakeScorer(tau1=1.0, tau2=1.0),
        PreferenceLayerBudget(cascading=True),
        UniformHeadBudget(),
    )
    hkv = 2
    plan = BudgetPlan(method, num_layers)
    out = []
    for layer, (pref, prefix) in enumerate(zip(prefs, prefixes, strict=True)):
        scores = torch.rand(hkv, prefix, generator=torch.Generator().manual_seed(layer))
        plan.add(ScoredLayer(scores, pref, None))
        budgets = method.layer_allocator.allocate(prefs[: layer + 1], prefixes[: layer + 1], num_layers, b)
        for caps in plan.caps:
            assert caps is not None and caps.shape == (hkv,) and int(caps[0]) == int(caps[1])
        out.append({"budgets": budgets, "held": [int(caps[0]) for caps in plan.caps]})
    return out


# Hand-computed: (prefs, prefixes, L, b, held per step).
HAND_CASES = [
    # shares 30 -> 12 (clamped, nowhere to spread); 15, 15 -> 12, 12; 5, 5, 20 -> 5, 5, 12 + 8 spread
    ([1.0, 1.0, 4.0], [12, 12, 12], 3, 10, [[12], [12, 12], [9, 9, 12]]),
    # L = 4, b = 2, P = 4. Step 2: 3.2, 1.6, 3.2 -> 3, 1, 3 + deficit 1 -> 4, 1, 3.
    # Step 3: 2.67, 1.33, 2.67, 1.33 -> 2, 1, 2, 1 + deficit 2 -> 3, 2, 2, 1: layer 1 would grow to 2
    # but holds only 1 entry; the cascade ends with 7 of the 8 entries (one-shot: 3, 2, 2, 1)
    ([2.0, 1.0, 2.0, 1.0], [4] * 4, 4, 2, [[4], [4, 4], [4, 1, 3], [3, 1, 2, 1]]),
    # a budget larger than a prefix: layer 0 has P = 4 < b; its surplus goes to the others
    # step 1: 15, 15 -> 4 (+11 surplus), 15 + 11 = 26; step 2: 10 x 3 -> 4, 10 + 3, 10 + 3
    ([1.0, 1.0, 1.0], [4, 30, 30], 3, 10, [[4], [4, 26], [4, 13, 13]]),
    # a share exactly at the prefix is clamped and receives nothing: step 1 24, 6 -> 12, 6 + 12 = 18
    # (not re-clamped upstream; the eviction keeps 12); step 2: 12, 3, 15 -> 12, 3 + 3, 12
    ([4.0, 1.0, 5.0], [12] * 3, 3, 10, [[12], [12, 12], [12, 6, 12]]),
    # zero preferences: all zero -> uniform (20 clamped, then 15, 15); then 0, 0, 30 -> 20 + 10 spread
    ([0.0, 0.0, 2.0], [20] * 3, 3, 10, [[20], [15, 15], [5, 5, 20]]),
    # a zero preference among positive ones: step 1 30, 0 -> 20, 0 + 10; step 2 15, 0, 15: layer 1
    # keeps only its window
    ([1.0, 0.0, 1.0], [20] * 3, 3, 10, [[20], [20, 10], [15, 0, 15]]),
]


@pytest.mark.parametrize(("prefs", "prefixes", "num_layers", "b", "held"), HAND_CASES)
def test_hand_computed_steps(prefs, prefixes, num_layers, b, held):
    ref = ref_cascading(prefs, prefixes, num_layers, b)
    assert [step["held"] for step in ref] == held
    ours = plan_steps(prefs, prefixes, num_layers, b)
    assert ours == ref


def random_case(seed: int):
    rng = random.Random(seed)
    num_layers = rng.randint(2, 24)
    b = rng.randint(1, 80)
    prefs = [rng.uniform(0.01, 5.0) ** 3 for _ in range(num_layers)]
    for i in rng.sample(range(num_layers), k=rng.randint(0, num_layers // 3)):
        prefs[i] *= rng.uniform(20, 200)  # dominant layers, clamped at their prefix
    if rng.random() < 0.3:
        for i in rng.sample(range(num_layers), k=rng.randint(1, num_layers // 2)):
            prefs[i] = 0.0
    if rng.random() < 0.5:  # one prefix for every layer, as upstream
        prefixes = [rng.randint(1, 4 * b + 1)] * num_layers
    else:  # a prefix per layer (sliding-window layers)
        prefixes = [rng.randint(1, 4 * b + 1) for _ in range(num_layers)]
    return prefs, prefixes, num_layers, b


@pytest.mark.parametrize("seed", range(80))
def test_matches_loop_reference_at_every_step(seed):
    prefs, prefixes, num_layers, b = random_case(seed)
    ref = ref_cascading(prefs, prefixes, num_layers, b)
    assert plan_steps(prefs, prefixes, num_layers, b) == ref
    final = ref[-1]["held"]
    assert sum(final) <= num_layers * b and all(0 <= h <= p for h, p in zip(final, prefixes))


def test_cascade_differs_from_the_one_shot_rule():
    """The reference is not the one-shot rule in disguise: over the random cases, some earlier layer
    ends below its last-step budget (it would have grown back), and the one-shot plan keeps more."""
    grew = 0
    for seed in range(80):
        prefs, prefixes, num_layers, b = random_case(seed)
        ref = ref_cascading(prefs, prefixes, num_layers, b)
        if ref[-1]["held"] != ref[-1]["budgets"]:
            grew += 1
    assert grew >= 10


def test_switch_validation_and_monotone():
    assert PreferenceLayerBudget().monotone is False
    assert PreferenceLayerBudget(cascading=True).monotone is True
    with pytest.raises(ValueError, match="cascading=true needs redistribute=even"):
        PreferenceLayerBudget(redistribute="proportional", cascading=True)
    with pytest.raises(ValueError, match="cascading must be true or false"):
        PreferenceLayerBudget(cascading="yes")


def test_registered_as_a_method():
    assert "cake_cascading" in compressing_methods()
    method = build_named_method("cake_cascading", 128)
    assert method.layer_allocator == PreferenceLayerBudget(redistribute="even", cascading=True)
    assert build_named_method("cake", 128).layer_allocator.cascading is False  # the default stays official
    assert type(method.scorer) is type(build_named_method("cake", 128).scorer)


# ------------------------------------------------------------------------------------------ end to end


class RecordingScorer:
    """Delegates to the method's scorer and keeps what it returned (scores and preference per layer)."""

    def __init__(self, inner):
        self.inner = inner
        self.seen = []

    def __call__(self, query_window, keys, values, window, scaling):
        result = self.inner(query_window, keys, values, window, scaling)
        self.seen.append((result.scores.float().tolist(), result.stat))
        return result

    def bind(self, model_name, budget):
        self.inner.bind(model_name, budget)


def tiny_llama(num_layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=num_layers,
        intermediate_size=128,
        vocab_size=128,
        head_dim=16,
        max_position_embeddings=512,
        initializer_range=0.15,
    )
    return LlamaForCausalLM(config).eval()


def stored_rows(layer) -> int:
    """Prompt rows a layer holds now: its full prefill KV until compressed, then its kept rows."""
    if layer.full_keys is not None:
        return layer.full_keys.shape[0] * layer.full_keys.shape[1]
    return layer.num_prompt_rows


def prefill(model, ids, name: str, budget: int):
    method = build_named_method(name, budget, model_name="tiny-random")
    method.scorer = RecordingScorer(method.scorer)
    cache = method.build_cache(model, max_new_tokens=4)
    peaks = []  # per layer: rows held when its compression starts (its full prompt included)
    original = cache.compress_layer

    def compress_layer(layer_idx, query, scaling):
        peaks.append(sum(stored_rows(layer) for layer in cache.layers[: layer_idx + 1]))
        original(layer_idx, query, scaling)

    cache.compress_layer = compress_layer
    with torch.no_grad():
        model(ids, **cache_kwargs(model, cache), use_cache=True)
    return method, cache, peaks


@pytest.mark.parametrize(
    ("seed", "num_layers", "n", "budget"),
    [
        (0, 6, 200, 64),
        (5, 12, 150, 40),  # layers 5 and 6 end one entry below their last-step budget (no growing back)
        (2, 6, 120, 96),  # b = 64 of a prefix of 88: layer 0 at its prefix at first
    ],
)
def test_cache_keeps_the_reference_entries_with_flat_memory(seed, num_layers, n, budget):
    hkv = 2
    model = tiny_llama(num_layers, seed)
    ids = torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(seed))
    method, cache, peaks = prefill(model, ids, "cake_cascading", budget)
    window, b, prefix = method.window, budget - method.window, n - method.window
    recorded = method.scorer.seen
    assert len(recorded) == num_layers
    prefs = [stat for _, stat in recorded]
    ref = ref_cascading(prefs, [prefix] * num_layers, num_layers, b)
    final = ref[-1]["held"]
    assert (final != ref[-1]["budgets"]) == (num_layers == 12)  # the case separates the two rules
    assert cache.layer_budgets == final
    for index, (layer, (scores, _)) in enumerate(zip(cache.layers, recorded, strict=True)):
        history = [step["held"][index] for step in ref[index:]]
        expect = ref_kept_positions(history, scores, window)
        assert [p.tolist() for p in layer.positions] == expect
        assert layer.head_lens.tolist() == [final[index] + window] * hkv
        assert layer.full_keys is None
    # Memory: when layer l's compression starts, the earlier layers hold at most their step l-1
    # budgets plus windows (up to the lazy repack's slack) and layer l its full prompt.
    for index, peak in enumerate(peaks):
        earlier = ref[index - 1]["held"] if index else []
        bound = sum(math.floor(hkv * (h + window) / (1 - SHRINK_SLACK)) for h in earlier) + hkv * n
        assert peak <= bound
        flat = math.floor(hkv * (num_layers * b + index * window) / (1 - SHRINK_SLACK)) + hkv * n
        assert peak <= flat
    assert sum(stored_rows(layer) for layer in cache.layers) == hkv * (sum(final) + num_layers * window)
    # The official one-shot rule holds every layer's prompt until the last one: above the flat bound.
    _, one_shot, one_shot_peaks = prefill(model, ids, "cake", budget)
    assert max(one_shot_peaks) == num_layers * hkv * n > max(peaks)
    assert one_shot.layer_budgets == ref[-1]["budgets"]  # the cascade's last step is the one-shot rule
