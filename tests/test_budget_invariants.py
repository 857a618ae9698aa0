"""Budget invariants of every method config (docs/methods.md, "The common frame").

Every ``configs/method/*.yaml`` except ``full`` is instantiated with Hydra exactly as the runner does
(``budget`` and ``model.name`` filled in) and run on tiny random models for prompts of 1 token,
shorter than the window, equal to the budget, one more than the budget, and long:

* total kept entries <= layers x kv_heads x budget (window included, floor=exact);
* prompts no longer than the budget are stored whole (nothing evicted);
* the measured bytes of the stored prompt match ``kept_entries x entry_bytes`` (within 5%);
* decoding runs from a 1-token prompt up.

``floor=upstream`` (LAVa's stale floor, docs/methods.md ``lava``) is shown to exceed the budget, as the
published code does.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eval.method_configs import compressing_methods, method_node
from lava.allocation import UniformHeadBudget, UniformLayerBudget
from lava.method import CompressionMethod

METHOD_NAMES = compressing_methods()  # the registry: a new configs/method/*.yaml is tested here unedited
BUDGET = 40  # the configs fix window = 32, so B0 - w = 8


def build(name: str, budget: int = BUDGET, **overrides) -> CompressionMethod:
    root = OmegaConf.create({"budget": budget, "model": {"name": "tiny-random"}})
    root.method = method_node(name)
    for key, value in overrides.items():
        OmegaConf.update(root, f"method.{key}", value)
    method = instantiate(root.method)
    assert isinstance(method, CompressionMethod)
    return method


def test_every_method_config_is_covered():
    assert set(METHOD_NAMES) >= {"snapkv", "pyramidkv", "adakv", "cake", "lava", "streamingllm"}
    for name in METHOD_NAMES:
        method = build(name)
        assert method.name == name and method.budget == BUDGET and method.window == 32


def _tiny(family: str):
    import transformers as tf

    common = dict(
        hidden_size=48,
        intermediate_size=64,
        vocab_size=96,
        max_position_embeddings=512,
        initializer_range=0.1,
    )
    torch.manual_seed(11)
    if family == "llama":
        config = tf.LlamaConfig(
            num_attention_heads=4, num_key_value_heads=2, head_dim=12, num_hidden_layers=3, **common
        )
    else:
        config = tf.Qwen3Config(
            num_attention_heads=6, num_key_value_heads=3, head_dim=8, num_hidden_layers=2, **common
        )
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None
    return model


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def tiny_model(request):
    return _tiny(request.param)


PROMPT_LENGTHS = [1, 20, BUDGET, BUDGET + 1, 150]  # 1 token, < window, == budget, budget + 1, long


@torch.no_grad()
def run(model, method: CompressionMethod, n: int, new_tokens: int = 2):
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(n))
    cache = method.build_cache(model, max_new_tokens=new_tokens)
    out = model(ids, past_key_values=cache, use_cache=True)
    report = cache.report()
    token = out.logits[0, -1].argmax().view(1, 1)
    for _ in range(new_tokens):
        out = model(token, past_key_values=cache, use_cache=True)
        assert torch.isfinite(out.logits).all()
        token = out.logits[0, -1].argmax().view(1, 1)
    assert cache.get_seq_length() == n + new_tokens
    return cache, report


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_kept_entries_within_budget_for_every_prompt_length(tiny_model, name):
    model = tiny_model
    layers, heads = model.config.num_hidden_layers, model.config.num_key_value_heads
    method = build(name)
    for n in PROMPT_LENGTHS:
        cache, report = run(model, method, n)
        kept = report["kept_entries"]
        assert kept == sum(sum(h) for h in report["kept_per_head"])
        assert kept <= layers * heads * BUDGET, (n, kept)
        if n <= BUDGET:
            assert not report["compressed"]
            assert kept == layers * heads * n
            assert report["kept_per_head"] == [[n] * heads] * layers
        else:
            assert report["compressed"]
            assert kept < layers * heads * n
            # the window is always kept, in every head of every layer
            for layer in cache.layers:
                for positions in layer.positions:
                    assert positions[-32:].tolist() == list(range(n - 32, n))
                    assert torch.all(positions[1:] > positions[:-1])  # sorted, no duplicates
        # memory is measured, not assumed
        assert report["entry_bytes"] == 2 * model.config.head_dim * 4  # K and V, fp32
        expected = kept * report["entry_bytes"]
        assert abs(report["cache_bytes"] - expected) <= 0.05 * expected, (n, report["cache_bytes"], expected)
        # the buffers hold nothing else than those entries and the room reserved for 2 decode steps per head
        assert cache.storage_bytes() == expected + layers * heads * 2 * report["entry_bytes"]
        assert report["decode_reserve_bytes"] == layers * heads * 2 * report["entry_bytes"]


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_budget_spent_on_long_prompts(tiny_model, name):
    """On a long prompt a method uses (nearly) its whole budget: uniform methods exactly, the others
    lose at most the integer floors of their layer and head shares."""
    model = tiny_model
    layers, heads = model.config.num_hidden_layers, model.config.num_key_value_heads
    method = build(name)
    _, report = run(model, method, 300, new_tokens=1)
    nominal = layers * heads * BUDGET
    uniform = isinstance(method.layer_allocator, UniformLayerBudget) and isinstance(
        method.head_allocator, UniformHeadBudget
    )
    if uniform:  # B0 - w per head on every layer, no shares to floor
        assert report["kept_entries"] == nominal
    else:
        # per layer and head: < 1 entry from int(B_l) and < 1 from int(alpha * B_l) plus rounding in the caps
        assert nominal - 2 * layers * heads <= report["kept_entries"] <= nominal


def test_upstream_floor_exceeds_the_budget():
    """LAVa's stale floor int(alpha * B0) (window included) adds entries on top of the budget (spec 3, 6.2)."""
    model = _tiny("llama")
    layers, heads = model.config.num_hidden_layers, model.config.num_key_value_heads
    nominal = layers * heads * BUDGET
    _, exact = run(model, build("lava"), 200)
    _, upstream = run(model, build("lava", **{"head_allocator.floor": "upstream"}), 200)
    assert exact["kept_entries"] <= nominal
    assert upstream["kept_entries"] > nominal
    # per head and layer: cap = round(0.8 c + int(0.2 * 40)) >= 8 non-window entries even where c = 0
    for per_layer in upstream["kept_per_head"]:
        assert min(per_layer) >= 32 + 8


def test_budget_must_exceed_window():
    from lava.errors import UserError

    with pytest.raises(UserError, match="must exceed"):
        CompressionMethod("snapkv", budget=32, window=32)
    with pytest.raises(UserError):
        CompressionMethod("lava", budget=0)


def test_the_cache_times_its_own_compression(tiny_model):
    """CompressedCache.timings (what the perf benchmark reports): scoring only when something is evicted."""
    long_cache, _ = run(tiny_model, build("snapkv"), 300, new_tokens=1)
    t = long_cache.timings
    assert t["scoring"] > 0 and t["allocation"] > 0 and t["scoring_cpu"] > 0 and t["allocation_cpu"] >= 0
    short_cache, _ = run(tiny_model, build("snapkv"), BUDGET - 1, new_tokens=1)  # fits: stored whole
    assert short_cache.timings["scoring"] == 0.0 and short_cache.timings["allocation"] > 0
