"""The question-agnostic setting (``bench.question=agnostic``, docs/question.md): the context part is
prefilled and compressed alone, the question part is prefilled into the compressed cache after.

What the maths says, checked on the embedded SmolLM2-135M (fp32, greedy):
- a budget at least the context's length evicts nothing, so the method's tokens are the full cache's
  in the same setting, token for token;
- what an agnostic cache keeps of the context cannot depend on the question, which it has not seen
  (and in the aware setting it does: the control that shows this test can fail);
- a sweep (one context prefill, the question prefilled into every cache) equals the single runs:
  token for token with ``max_decode_batch=1`` (the question forward of each cache alone, the single
  run's computation), and with the compressed caches' question forwards batched too;
- the batched question forward (``lava.batch.BatchedCache``) gives every cache the first-token logits
  and the stored entries (the sliding windows of a hybrid model included) of a forward through that
  cache alone, up to float rounding;
- an ``aware`` run keeps the folder (identity hash) it had before the setting existed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from eval.generation import greedy_generate
from eval.method_configs import build_named_method
from eval.run_folder import run_dir_for
from eval.runner import run

REPO = Path(__file__).resolve().parents[1]
NIAH = [
    "bench=niah",
    "bench.lengths=[700]",
    "bench.depths=[20,80]",
    "bench.max_new_tokens=12",
    "bench.min_new_tokens=1",
    "bench.question=agnostic",
    "progress=false",
]


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _records(run_dir: Path) -> dict[str, dict]:
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def test_aware_runs_keep_their_folders():
    """The hashes ``make run`` printed before ``bench.question`` existed (README, 2026-12-05)."""
    grid = ["bench=niah", "bench.lengths=[500,1000,1500,2000]", "bench.depths=[0,25,50,75,100]"]
    grid.append("bench.min_new_tokens=1")
    assert run_dir_for(_cfg(*grid, "method=snapkv", "budget=128")).name == "snapkv-b128-e4703467"
    assert run_dir_for(_cfg(*grid, "method=full")).name == "full-15ec8698"
    agnostic = run_dir_for(_cfg(*grid, "method=snapkv", "budget=128", "bench.question=agnostic")).name
    assert agnostic.startswith("snapkv-b128-agnostic-") and agnostic != "snapkv-b128-agnostic-e4703467"


def test_budget_beyond_the_context_gives_the_full_cache_tokens(tmp_path):
    full = run(_cfg(*NIAH, "method=full", f"output_root={tmp_path}"))
    reference = _records(full.run_dir)
    assert all(0 < r["context_tokens"] < r["prompt_tokens"] for r in reference.values())
    assert all(r["prompt_tokens"] < 1024 for r in reference.values())
    for method in ("snapkv", "lava", "adakv"):
        summary = run(_cfg(*NIAH, f"method={method}", "budget=1024", f"output_root={tmp_path}"))
        records = _records(summary.run_dir)
        assert records.keys() == reference.keys()
        for sample_id, record in records.items():
            assert record["prediction"] == reference[sample_id]["prediction"], (method, sample_id)
            assert record["new_tokens"] == reference[sample_id]["new_tokens"]


def test_agnostic_sweep_equals_single_runs(tmp_path):
    sweep = ["methods=[full,snapkv,lava]", "budgets=[64]"]
    # max_decode_batch=1: every question forward runs through one cache, as in the single run; the
    # default (32) runs snapkv's and lava's question forward as one batch, then decodes them together.
    exact = run(_cfg(*NIAH, *sweep, "max_decode_batch=1", f"output_root={tmp_path / 'exact'}"))
    batched = run(_cfg(*NIAH, *sweep, f"output_root={tmp_path / 'batched'}"))
    assert [r.new_samples for r in exact.runs] == [r.new_samples for r in batched.runs] == [2, 2, 2]
    for swept, swept_batched in zip(exact.runs, batched.runs, strict=True):
        name = swept.run_dir.name.split("-")[0]
        budget = [] if name == "full" else ["budget=64"]
        single = run(_cfg(*NIAH, f"method={name}", *budget, f"output_root={tmp_path / 'single'}"))
        assert single.run_dir.name == swept.run_dir.name == swept_batched.run_dir.name
        assert "-agnostic-" in single.run_dir.name
        a, b, c = _records(swept.run_dir), _records(single.run_dir), _records(swept_batched.run_dir)
        assert a.keys() == b.keys() == c.keys()
        for sample_id in a:
            for key in ("prediction", "new_tokens", "context_tokens", "kept_per_head"):
                assert a[sample_id].get(key) == b[sample_id].get(key), (name, sample_id, key)
                # Measured equal on these prompts (the batch moves the first logits by < 1e-4).
                assert c[sample_id].get(key) == b[sample_id].get(key), (name, sample_id, key, "batched")
            assert c[sample_id]["question_seconds"] > 0


# ---------------------------------------------------------------------------------------------------------
# The batched question forward against one forward per cache
# ---------------------------------------------------------------------------------------------------------

# The batched question forward attends through lava.varlen.varlen_attention (each cache's KV heads
# padded with heads of similar length), a cache alone through its own rows (one masked matmul over
# every head's rows, or one SDPA over its padded heads): the same sums in another order, and the
# projections run on B rows instead of one. On the SmolLM2 inputs below, the fp32 first-token
# logits of either path are within E = 4.9e-5 of the same forward in float64 (|logits| <= 22; the
# question's stored keys and values within 3.8e-5), and the two paths differ by up to 6.0e-5
# (logits) and 2.7e-5 (entries), 4.1e-5 for both in the padded layout; on the tiny Gemma 3
# everything is 20x smaller (E = 3.4e-6, paths 2.2e-6 apart). Measured 2026-12-05 on a 2-core x86 CPU,
# over every registry method at budget 64 (40 on Gemma), knorm left out of the float64 comparison
# (its float64 scores keep other entries). Two fp32 paths are at most 2E apart; the bound below is
# 4E, as the fidelity sweep's (tests/test_sweep_fidelity.py). A real difference (a cache that
# missed the question, a stale sliding window, another cache's entries) moves the logits by 0.1 or
# more: the control below checks that each compressed cache's logits lie more than 100x the bound
# from the full cache's.
QUESTION_ABS = 2e-4


def _question_state(cache) -> list[dict]:
    """What a question forward leaves in each layer: positions and lengths (compared exactly), the
    question's stored keys and values (compared within QUESTION_ABS), the kept context rows (exactly)."""
    from lava.cache import SlidingLayer

    out = []
    for layer in cache.layers:
        if isinstance(layer, SlidingLayer):
            exact = {"position": layer.cumulative_length, "shape": tuple(layer.keys.shape)}
            close = {"keys": layer.keys, "values": layer.values}
            kept = {}
        else:
            exact = {
                "seq_len": layer.seq_len,
                "tail_len": layer.tail_len,
                "head_lens": layer.head_lens.tolist(),
                "positions": layer.row_pos.tolist(),
            }
            close = {"keys": layer._tail(layer.keys), "values": layer._tail(layer.values)}
            kept = {"keys": layer.prompt_keys, "values": layer.prompt_values}
        out.append({"exact": exact, "close": close, "kept": kept})
    return out


def _question_both_ways(model, context, question, methods, max_batch: int):
    """The sweep's shared prefill of ``context``, then the question into every cache: one forward per
    cache (max_batch=1) and in batches of ``max_batch``; two independent prefills of the same context."""
    from eval.sweep import shared_prefill

    out = []
    for batch in (1, max_batch):
        prefill = shared_prefill(model, context, methods, 8 + question.shape[1])
        prefill.prefill_question(model, question, batch)
        out.append(prefill)
    return out


def _assert_close_to_serial(serial, batched, methods, question_tokens: int, context_tokens: int) -> None:
    assert serial.logits.shape == batched.logits.shape == (len(methods), serial.logits.shape[-1])
    for i, method in enumerate(methods):
        tag = "full" if method is None else method.name
        if method is None:  # the full cache runs alone either way: the same forward
            assert torch.equal(serial.logits[i], batched.logits[i]), tag
            continue
        diff = (serial.logits[i] - batched.logits[i]).abs().max().item()
        assert diff <= QUESTION_ABS, (tag, diff)
        for layer, (a, b) in enumerate(
            zip(_question_state(serial.caches[i]), _question_state(batched.caches[i]), strict=True)
        ):
            assert a["exact"] == b["exact"], (tag, layer)
            if "seq_len" in a["exact"]:
                assert a["exact"]["tail_len"] == question_tokens, (tag, layer)
            else:  # a sliding window ends at the question's last token
                assert a["exact"]["position"] == context_tokens + question_tokens, (tag, layer)
            for name in a["kept"]:  # the kept context rows: never written by the question
                assert torch.equal(a["kept"][name], b["kept"][name]), (tag, layer, name)
            for name in a["close"]:
                diff = (a["close"][name] - b["close"][name]).abs().max().item()
                assert diff <= QUESTION_ABS, (tag, layer, name, diff)
    # Control: the bound separates real differences. Each compressed cache sees fewer context
    # entries than the full cache, and its first-token logits move far beyond the bound.
    full = methods.index(None)
    for i, method in enumerate(methods):
        if method is not None:
            apart = (serial.logits[i] - serial.logits[full]).abs().max().item()
            assert apart > 100 * QUESTION_ABS, (method.name, apart)


def _assert_shares(batched, methods, max_batch: int) -> None:
    """Each compressed cache gets its batch's wall time divided by the batch's rows."""
    seconds = batched.seconds["question"]
    assert len(seconds) == len(methods) and all(s > 0 for s in seconds)
    rows = [i for i, m in enumerate(methods) if m is not None]
    for start in range(0, len(rows), max_batch):
        group = rows[start : start + max_batch]
        assert len({seconds[i] for i in group}) == 1, group


@pytest.mark.parametrize("kernel", ["masked-matmul", "sdpa-padded"])
def test_batched_question_matches_one_forward_per_cache(monkeypatch, smollm2, kernel):
    """Both storage layouts of the compressed caches: the CPU's packed rows, and the padded heads of
    CUDA without flash-attn (forced on the CPU, every layer padded)."""
    import lava.cache
    from lava.attention import force_decode_kernel

    model, tokenizer = smollm2
    monkeypatch.setattr(lava.cache, "PAD_SLACK", 100.0)  # the padded layout in every layer
    essay = "The harbour town kept its lighthouse lit through every storm of the century. " * 30
    context = torch.tensor([tokenizer.encode("Read the text.\n" + essay)])
    question = torch.tensor(
        [tokenizer.encode(" What did the town keep lit? Answer:", add_special_tokens=False)]
    )
    names = ["snapkv", "pyramidkv", "adakv", "lava", "streamingllm"]
    methods = [None, *(build_named_method(name, 64) for name in names)]
    with force_decode_kernel(kernel):
        serial, batched = _question_both_ways(model, context, question, methods, max_batch=3)  # 3 + 2
    for prefill in (serial, batched):
        assert {layer.kernel for cache in prefill.caches[1:] for layer in cache.layers} == {kernel}
    _assert_close_to_serial(serial, batched, methods, question.shape[1], context.shape[1])
    _assert_shares(batched, methods, 3)


@pytest.fixture(scope="module")
def gemma():
    """The tiny random Gemma 3 of tests/test_hybrid_attention.py (sliding window 16, 3 global layers)."""
    from test_hybrid_attention import gemma3_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    return AutoModelForCausalLM.from_config(gemma3_config(), attn_implementation="sdpa").eval()


@pytest.mark.parametrize("question_tokens", [6, 20])  # the window keeps context entries, or none
def test_batched_question_writes_the_sliding_windows_back(gemma, question_tokens):
    """Hybrid model: after the batched question forward each cache's own sliding windows hold what a
    forward through it alone leaves there; decoding from the caches then gives the same tokens (up to
    float ties of the serial path's first tokens)."""
    from test_hybrid_attention import REGISTRY, prompt

    from eval.sweep import decode_all

    ids = prompt(130 + question_tokens, seed=7)
    context, question = ids[:, :130], ids[:, 130:]
    methods = [None, *(build_named_method(name, 40, "tiny-random") for name in REGISTRY)]
    serial, batched = _question_both_ways(gemma, context, question, methods, max_batch=len(methods))
    _assert_close_to_serial(serial, batched, methods, question_tokens, 130)
    _assert_shares(batched, methods, len(methods))
    steps = 6
    a = decode_all(gemma, serial, methods, steps, [], 0, max_batch=len(methods))
    b = decode_all(gemma, batched, methods, steps, [], 0, max_batch=len(methods))
    for method, x, y in zip(methods, a, b, strict=True):
        if x.token_ids != y.token_ids:
            step = next(k for k, (s, t) in enumerate(zip(x.token_ids, y.token_ids)) if s != t)
            assert x.margins[step] <= 1e-4, (method and method.name, step)


def test_one_token_question_goes_cache_by_cache(smollm2):
    """A one-token batched forward would decode in the batch's own buffers, which never reach the
    caches: such a question runs through each cache alone, whatever max_batch."""
    model, tokenizer = smollm2
    context = torch.tensor([tokenizer.encode("The lighthouse stayed lit through every storm. " * 40)])
    question = torch.tensor([tokenizer.encode(" Answer", add_special_tokens=False)[:1]])
    methods = [None, build_named_method("snapkv", 64), build_named_method("lava", 64)]
    serial, batched = _question_both_ways(model, context, question, methods, max_batch=3)
    assert torch.equal(serial.logits, batched.logits)
    for i in (1, 2):
        assert all(layer.tail_len == 1 for layer in batched.caches[i].layers)


def _kept_positions(cache) -> list[list[list[int]]]:
    return [[p.tolist() for p in layer.positions] for layer in cache.layers]


@pytest.mark.parametrize("method", ["snapkv", "lava"])
def test_kept_entries_depend_on_the_context_only(smollm2, method):
    model, tokenizer = smollm2
    from lava.attention import enable

    enable(model)
    essay = "The harbour town kept its lighthouse lit through every storm of the century. " * 30
    context = tokenizer.encode("Read the text.\n" + essay, add_special_tokens=True)
    questions = [
        tokenizer.encode(" What did the town keep lit? Answer:", add_special_tokens=False),
        tokenizer.encode(
            " Which century had storms, and how many ships sank? Answer:", add_special_tokens=False
        ),
    ]

    def kept(question: list[int], agnostic: bool):
        cache = build_named_method(method, 96).build_cache(model, max_new_tokens=2 + len(question))
        ids = context if agnostic else context + question
        greedy_generate(
            model,
            torch.tensor([ids]),
            max_new_tokens=2,
            stop_ids=[],
            cache=cache,
            question_ids=torch.tensor([question]) if agnostic else None,
        )
        assert cache.compressed
        return _kept_positions(cache)

    assert kept(questions[0], agnostic=True) == kept(questions[1], agnostic=True)
    # Control: with the question compressed along (aware), the kept entries follow the question.
    assert kept(questions[0], agnostic=False) != kept(questions[1], agnostic=False)


def test_a_bad_setting_is_refused_before_any_work(tmp_path):
    from tests.test_checks import assert_refused

    assert_refused(
        tmp_path, ["bench.question=maybe"], "bench.question=maybe is invalid; give aware or agnostic"
    )
    assert_refused(
        tmp_path,
        ["bench.question=maybe", "methods=[full,lava]", "budgets=[64]"],
        "bench.question=maybe is invalid",
    )
