"""KVzip (kvpress's KVzipPress) against a float64 loop reference of its definition, and through both cache paths.

The reference is written from the definition (docs/methods.md, ``kvzip``): a plain ``DynamicCache``
prefill of the prompt in float64 (transformers' SDPA attention), then per chunk a fresh prefill and one forward
of ``instruction + suffix + chunk`` whose per-layer queries are rebuilt from the attention inputs
(q projection, RoPE); for every layer, query head, reconstruction query and chunk position, the
softmax over the sinks, the chunk and the reconstruction tokens seen so far is computed with
``math`` on Python floats, and the maximum kept. The reconstruction pieces are spelled out here as
text (kvpress's instructions, SmolLM2's chat template), not read from the library.

Also: a budget at least the prompt keeps every entry and decodes as the full cache; the budget
invariants of the config (at most layers x KV heads x budget entries, exactly that per layer with the
flat selection, sinks and window in every head); a single run keeps what a sweep keeps, with equal
scores; the reconstruction passes run inside the timed scoring of both paths; the refusals.
"""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from eval.generation import greedy_generate
from eval.method_configs import build_named_method
from lava.allocation import FlatHeadBudget, UniformLayerBudget
from lava.compat import cache_kwargs
from lava.errors import UserError
from lava.method import CompressionMethod
from lava.policy import scorer_key
from lava.prefill import build_cache_from_capture, capture_prefill, capture_queries, score_methods
from lava.scorers import KVzipScorer
from lava.scorers.kvzip import ReplayCache

FIRST = "\n\nRepeat the previous context exactly."
LATER = "\n\nRepeat the part of the previous context exactly, starting with"
SMOLLM2_PREFIX = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n"
)
SMOLLM2_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
LAYERS, HQ, HKV, D = 2, 4, 2, 8


# ---------------------------------------------------------------------------------------------------------
# Fixtures: a tiny random Llama over SmolLM2's vocabulary, its tokenizer saved with and without a template.
# ---------------------------------------------------------------------------------------------------------


def tiny_llama(vocab: int, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=HQ,
        num_key_value_heads=HKV,
        head_dim=D,
        num_hidden_layers=LAYERS,
        vocab_size=vocab,
        max_position_embeddings=512,
        initializer_range=0.3,  # peaked attention: scores spread over decades
    )
    torch.manual_seed(5)
    model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config.eos_token_id = None
    return model


@pytest.fixture(scope="module")
def tokenizer_dirs(smollm2_tokenizer, tmp_path_factory):
    """``{"template": folder, "plain": folder}``: SmolLM2's tokenizer, and the same without its chat template."""
    root = tmp_path_factory.mktemp("kvzip-tokenizers")
    smollm2_tokenizer.save_pretrained(root / "template")
    plain = copy.deepcopy(smollm2_tokenizer)
    plain.chat_template = None
    plain.save_pretrained(root / "plain")
    return {"template": str(root / "template"), "plain": str(root / "plain")}


def named(model, name: str):
    """``model`` with ``config.name_or_path`` = ``name`` (where the scorer finds the tokenizer)."""
    model.config.name_or_path = name
    return model


def method_of(scorer: KVzipScorer, budget: int, window: int = 4) -> CompressionMethod:
    return CompressionMethod(
        "kvzip", budget, window, scorer, UniformLayerBudget(), FlatHeadBudget(alpha=0.0, floor="exact")
    )


# ---------------------------------------------------------------------------------------------------------
# The loop reference.
# ---------------------------------------------------------------------------------------------------------


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _query_grabber(into: dict[int, torch.Tensor], layer: int):
    """A pre-hook on a layer's attention that stores its post-RoPE queries (Hq, q, d) in ``into[layer]``:
    the q projection of the attention input, rotated with the model's cosines and sines."""

    def grab(module, args, kwargs):
        h = kwargs["hidden_states"]
        cos, sin = kwargs["position_embeddings"]
        q = module.q_proj(h).view(1, h.shape[1], HQ, D).transpose(1, 2)  # (1, Hq, q, d)
        into[layer] = (q * cos[:, None] + _rotate_half(q) * sin[:, None])[0]

    return grab


def reference_scores(
    model, ids: list[int], pieces: dict, skip: int, chunk: int, overlap: int, n_sink: int, window: int
) -> list[list[list[float]]]:
    """Per layer, KV head and prefix position ``j < n - window``: KVzip's score, from the definition.

    ``pieces`` holds the token ids of ``first``, ``later`` and ``suffix``; ``skip`` is the number of
    leading prompt tokens that are the template's (never scored).
    """
    n = len(ids)
    group = HQ // HKV
    evidence = [[[0.0] * n for _ in range(HKV)] for _ in range(LAYERS)]
    starts = list(range(skip, n, chunk))
    for c, start in enumerate(starts):
        stop = min(start + chunk, n)
        head = pieces["first"] if c == 0 else pieces["later"] + ids[start - min(overlap, chunk) : start]
        tokens = head + pieces["suffix"] + ids[start:stop]
        q_len = len(tokens)
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]), **cache_kwargs(model, cache), use_cache=True)
        queries: dict[int, torch.Tensor] = {}

        hooks = [
            layer.self_attn.register_forward_pre_hook(_query_grabber(queries, i), with_kwargs=True)
            for i, layer in enumerate(model.model.layers)
        ]
        try:
            with torch.no_grad():
                model(input_ids=torch.tensor([tokens]), **cache_kwargs(model, cache), use_cache=True)
        finally:
            for hook in hooks:
                hook.remove()
        sinks = list(range(min(n_sink, start)))
        for layer in range(LAYERS):
            keys = cache.layers[layer].keys[0].tolist()  # (Hkv, n + q, d): the prompt, then the pass
            q = queries[layer].tolist()
            for h in range(HQ):
                kv = h // group
                for i in range(q_len):
                    seen = sinks + list(range(start, stop)) + [n + t for t in range(i + 1)]
                    logits = [
                        math.fsum(a * b for a, b in zip(q[h][i], keys[kv][t], strict=True)) / math.sqrt(D)
                        for t in seen
                    ]
                    top = max(logits)
                    weights = [math.exp(x - top) for x in logits]
                    total = math.fsum(weights)
                    for offset, j in enumerate(range(start, stop)):
                        p = weights[len(sinks) + offset] / total
                        evidence[layer][kv][j] = max(evidence[layer][kv][j], p)
    out = []
    for layer in range(LAYERS):
        top = max(max(row) for row in evidence[layer]) + 1
        heads = []
        for kv in range(HKV):
            row = [top if j < n_sink else evidence[layer][kv][j] for j in range(n)]
            heads.append(row[: n - window])
        out.append(heads)
    return out


def pieces_of(tokenizer, template: bool | None) -> dict:
    """The reconstruction pieces spelled out: kvpress's instructions, SmolLM2's template (or a newline);
    ``template=None``: a model with no tokenizer (empty pieces)."""

    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    if template is None:
        return {"prefix": [], "first": [], "later": [], "suffix": []}
    return {
        "prefix": enc(SMOLLM2_PREFIX) if template else [],
        "first": enc(FIRST),
        "later": enc(LATER),
        "suffix": enc(SMOLLM2_SUFFIX if template else "\n"),
    }


CASES = {
    # name: (tokenizer folder, prompt starts with the template prefix, template_prefix rule, chunk size)
    "template-prefixed-if_present": ("template", True, "if_present", 16),
    "template-raw-if_present": ("template", False, "if_present", 16),
    "template-raw-always": ("template", False, "always", 16),
    "plain-one-chunk": ("plain", False, "if_present", 64),
    "plain-chunks-of-3": ("plain", False, "if_present", 3),  # chunks shorter than the overlap
    "no-tokenizer": (None, False, "if_present", 16),
}


@pytest.mark.parametrize("case", list(CASES))
def test_scores_match_the_float64_loop_reference(case, smollm2_tokenizer, tokenizer_dirs):
    folder, prefixed, rule, chunk = CASES[case]
    template = None if folder is None else folder == "template"
    pieces = pieces_of(smollm2_tokenizer, template)
    body = torch.randint(1000, 20000, (41,), generator=torch.Generator().manual_seed(3)).tolist()
    ids = (pieces_of(smollm2_tokenizer, True)["prefix"] if prefixed else []) + body
    n = len(ids)
    skip = len(pieces["prefix"]) if (prefixed or rule == "always") else 0
    window, n_sink, overlap = 4, 4, 8
    model = named(
        tiny_llama(len(smollm2_tokenizer), torch.float64), "" if folder is None else tokenizer_dirs[folder]
    )
    reference = copy.deepcopy(model)  # SDPA in fp64 (transformers' eager attention softmaxes in fp32)
    reference.set_attn_implementation("sdpa")
    expected = reference_scores(reference, ids, pieces, skip, chunk, overlap, n_sink, window)

    method = method_of(
        KVzipScorer(n_sink=n_sink, chunk_size=chunk, overlap=overlap, template_prefix=rule), n - 10, window
    )
    capture, _ = capture_prefill(model, torch.tensor([ids]), capture_queries([method]))
    scored, _ = score_methods(capture, [method])
    for layer, mine in enumerate(scored[scorer_key(method)]):
        torch.testing.assert_close(
            mine.scores.double(), torch.tensor(expected[layer], dtype=torch.float64), rtol=1e-6, atol=1e-12
        )
    # the template's tokens after the sinks score 0, context tokens above 0
    for layer in expected:
        for head in layer:
            assert all(s == 0.0 for s in head[n_sink:skip])
            assert all(s > 0.0 for s in head[max(skip, n_sink) :])


def test_template_prefix_rules(smollm2_tokenizer, tokenizer_dirs):
    """``if_present`` skips the prefix only where the prompt starts with it; ``always`` skips its length."""
    model = named(tiny_llama(len(smollm2_tokenizer)), tokenizer_dirs["template"])
    prefix = pieces_of(smollm2_tokenizer, True)["prefix"]
    raw = torch.arange(1000, 1040)
    wrapped = torch.cat([torch.tensor(prefix), raw])
    present, always = KVzipScorer(), KVzipScorer(template_prefix="always")
    prompt = present.prompt_for(model)
    assert (
        list(prompt.prefix) == prefix and list(prompt.suffix) == pieces_of(smollm2_tokenizer, True)["suffix"]
    )
    assert present.context_start(wrapped, prompt) == len(prefix) == always.context_start(raw, prompt)
    assert present.context_start(raw, prompt) == 0
    assert always.context_start(raw[:5], prompt) == 5  # never beyond the prompt


# ---------------------------------------------------------------------------------------------------------
# Through the caches.
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(smollm2_tokenizer, tokenizer_dirs):
    return named(tiny_llama(len(smollm2_tokenizer)), tokenizer_dirs["template"])


def prompt_ids(n: int) -> torch.Tensor:
    return torch.randint(1000, 20000, (1, n), generator=torch.Generator().manual_seed(n))


def single_run(model, method, ids, new_tokens: int = 4):
    cache = method.build_cache(model, new_tokens)
    gen = greedy_generate(model, ids, max_new_tokens=new_tokens, stop_ids=[], cache=cache, min_new_tokens=0)
    return cache, gen


def test_budget_at_least_the_prompt_is_the_full_cache(model):
    ids = prompt_ids(60)
    full = greedy_generate(
        model, ids, max_new_tokens=6, stop_ids=[], cache=DynamicCache(config=model.config), min_new_tokens=0
    )
    for budget in (60, 100):
        cache, gen = single_run(model, build_named_method("kvzip", budget), ids, 6)
        assert gen.token_ids == full.token_ids
        assert not cache.compressed and cache.timings["scoring"] == 0.0  # nothing to evict: no pass
        assert cache.kept_per_head() == [[60] * HKV] * LAYERS


@pytest.mark.parametrize("budget", [40, 48, 90])
def test_budget_invariants(model, budget):
    n, window = 100, 32
    cache, _ = single_run(model, build_named_method("kvzip", budget), prompt_ids(n))
    kept = cache.kept_per_head()
    assert sum(map(sum, kept)) <= LAYERS * HKV * budget
    # one flat top-k per layer (alpha 0): the layer's whole share, split freely among its heads
    assert [sum(layer) for layer in kept] == [HKV * budget] * LAYERS
    for layer in cache.layers:
        for positions in layer.positions:
            p = positions.tolist()
            assert p[:4] == [0, 1, 2, 3]  # the sinks
            assert p[-window:] == list(range(n - window, n))  # the window


def test_single_run_keeps_what_the_sweep_keeps(model):
    ids = prompt_ids(150)
    for budget in (48, 100):
        method = method_of(KVzipScorer(chunk_size=32), budget, window=8)
        cache, _ = single_run(model, method, ids)
        capture, _ = capture_prefill(model, ids, capture_queries([method]))
        scored, _ = score_methods(capture, [method])
        layers = scored[scorer_key(method)]
        swept = build_cache_from_capture(method, capture, layers, reserve=4)
        assert [[p.tolist() for p in x.positions] for x in cache.layers] == [
            [p.tolist() for p in x.positions] for x in swept.layers
        ]
        for online, shared in zip(cache.plan.layers, layers, strict=True):
            assert torch.equal(online.scores, shared.scores)


def test_reconstruction_passes_are_timed_as_scoring(model, monkeypatch):
    """Each chunk is one forward over a ReplayCache, run inside the scoring time of both paths."""
    n, chunk, pause = 100, 32, 0.3
    passes: list[int] = []

    def count(module, args, kwargs):
        given = kwargs.get("cache", kwargs.get("past_key_values"))
        if isinstance(given, ReplayCache):
            passes.append(kwargs["input_ids"].shape[1])

    original = KVzipScorer.model_pass

    def slow_pass(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        time.sleep(pause)  # inside the pass: must show in the scoring time
        return out

    monkeypatch.setattr(KVzipScorer, "model_pass", slow_pass)
    method = method_of(KVzipScorer(chunk_size=chunk), 48, window=8)
    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        cache, gen = single_run(model, method, prompt_ids(n))
        single_passes = list(passes)
        capture, _ = capture_prefill(model, prompt_ids(n), capture_queries([method]))
        _, seconds = score_methods(capture, [method])
    finally:
        hook.remove()
    chunks = math.ceil(n / chunk)  # no template prefix in a random prompt: the whole prompt is repeated
    assert len(single_passes) == chunks and len(passes) == 2 * chunks
    assert cache.timings["scoring"] >= pause and cache.timings["scoring_cpu"] > 0
    assert gen.prefill_seconds >= cache.timings["scoring"]  # the passes run inside the prefill call
    assert seconds[scorer_key(method)] >= pause


def test_refusals(model):
    with pytest.raises(UserError, match="template_prefix"):
        KVzipScorer(template_prefix="never")
    with pytest.raises(UserError, match="chunk_size"):
        KVzipScorer(chunk_size=0)
    with pytest.raises(RuntimeError, match="model pass"):
        KVzipScorer()(None, torch.zeros(2, 5, 8), torch.zeros(2, 5, 8), 1, 1.0)
    lost = named(copy.deepcopy(model), "/nonexistent/kvzip-model")
    with pytest.raises(UserError, match="tokenizer"):
        KVzipScorer().prompt_for(lost)


def test_registered_config():
    method = build_named_method("kvzip", 128)
    assert isinstance(method.scorer, KVzipScorer) and method.window == 32
    assert method.scorer.chunk_size == 2048 and method.scorer.n_sink == 4 and method.scorer.overlap == 8
    assert method.head_allocator == FlatHeadBudget(alpha=0.0, floor="exact")
    assert isinstance(method.layer_allocator, UniformLayerBudget)
