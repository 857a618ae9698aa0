"""The GPU check's sweep phase at CPU size, and the sweep's memory fixes it measures on a GPU.

The phase runs the real ``run.py`` twice (``method=full``, then ``methods=all``) over a tiny random
Llama written to a local folder; its numbers are checked against the run folders the two processes
wrote, read here independently. The memory fixes: the full cache of a shared prefill reuses the
captured keys and values (no copy), and each cache is dropped as soon as its configuration is decoded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from eval.gpu_check.clock import Clock
from eval.gpu_check.models import TINY, random_llama
from eval.gpu_check.sweep import CPU_SMALL_ESTIMATE_S, SMALL_SIZES, add_ratios, run_sweep_phase, summary_lines
from eval.method_configs import build_named_method, compressing_methods
from lava.errors import UserError

GIB = 2**30


@pytest.fixture(scope="module")
def phase(tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep-phase")
    result = run_sweep_phase(SMALL_SIZES, "cpu", Clock(600), CPU_SMALL_ESTIMATE_S, work_dir=work, keep=True)
    assert result["errors"] == [], result["errors"]
    return result, work


def _folders(root: Path) -> dict[str, dict]:
    """Run folder name -> its run_meta.json and predictions.jsonl, read straight from disk."""
    out = {}
    for meta in root.rglob("run_meta.json"):
        lines = (meta.parent / "predictions.jsonl").read_text().splitlines()
        out[meta.parent.name] = {
            "meta": json.loads(meta.read_text()),
            "records": [json.loads(line) for line in lines],
        }
    return out


def test_phase_runs_the_same_samples_through_both_runs(phase):
    result, work = phase
    full, sweep = _folders(work / "full"), _folders(work / "sweep")
    # 2 samples at depths 100 * 1/3 and 100 * 2/3, rounded; every configuration of both budgets plus full.
    expected_ids = {"niah_L512_D33", "niah_L512_D67"}
    assert len(full) == 1
    assert len(sweep) == 1 + 2 * len(compressing_methods())
    for run in [*full.values(), *sweep.values()]:
        assert {r["id"] for r in run["records"]} == expected_ids
        assert all(r["new_tokens"] == SMALL_SIZES["new_tokens"] for r in run["records"])  # every step decoded
        assert run["meta"]["device_memory"] is None  # CPU: no accelerator counters
    assert result["meta"]["same_samples"] is True
    assert result["meta"]["sample_ids"] == sorted(expected_ids)
    rows = {r["run"]: r for r in result["rows"]}
    assert rows["sweep"]["configurations"] == len(sweep) and rows["full"]["configurations"] == 1
    assert rows["sweep"]["samples"] == rows["full"]["samples"] == 2


def test_sweep_full_configuration_predicts_what_the_single_run_does(phase):
    """One prefill for every configuration is the single run's maths: fp32, the same tokens."""
    result, work = phase
    (single,) = _folders(work / "full").values()
    (swept,) = [run for name, run in _folders(work / "sweep").items() if name.startswith("full-")]
    pick = lambda run: {r["id"]: (r["prediction"], r["new_tokens"]) for r in run["records"]}  # noqa: E731
    assert pick(swept) == pick(single)
    assert result["meta"]["full_predictions_equal"] is True


def test_recorded_numbers_are_the_run_folders(phase):
    result, work = phase
    rows = {r["run"]: r for r in result["rows"]}
    (single,) = _folders(work / "full").values()
    sweep_meta = next(iter(_folders(work / "sweep").values()))["meta"]["timings"]
    # The single run: the sample loop's wall time, and its phases summed from the per-sample records.
    assert rows["full"]["samples_s"] == single["meta"]["timings"]["samples_seconds"]
    for phase_name in ("prefill", "scoring", "allocation", "decode"):
        per_sample = sum(r[f"{phase_name}_seconds"] for r in single["records"])
        assert rows["full"][f"{phase_name}_s"] == pytest.approx(per_sample, abs=2e-3)
        assert rows["sweep"][f"{phase_name}_s"] == sweep_meta["sweep_phase_seconds"][phase_name]
    assert rows["sweep"]["samples_s"] == sweep_meta["sweep_samples_seconds"]
    assert rows["sweep"]["wall_ratio"] == pytest.approx(
        sweep_meta["sweep_samples_seconds"] / single["meta"]["timings"]["samples_seconds"]
    )
    assert rows["full"]["prompt_tokens"] == max(r["prompt_tokens"] for r in single["records"])
    # CPU: memory is not measured, so its verdict is None (not a pass).
    assert math.isnan(rows["sweep"]["peak_above_weights_ratio"])
    assert result["passed"]["peak_above_weights_ratio"] is None
    assert result["passed"]["wall_ratio"] == (rows["sweep"]["wall_ratio"] <= 2.0)
    text = "\n".join(summary_lines(result))
    assert f"{rows['sweep']['wall_ratio']:.2f} (target <= 2)" in text


def test_model_folder_has_the_tokenizer_and_its_vocabulary(phase):
    from transformers import AutoTokenizer

    _, work = phase
    config = json.loads((work / "model" / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    assert config["vocab_size"] == len(tokenizer) == 49152  # SmolLM2's vocabulary
    assert config["num_hidden_layers"] == TINY["num_hidden_layers"]
    assert config["eos_token_id"] == tokenizer.eos_token_id
    assert (work / "model" / "model.safetensors").exists()


def test_ratios_and_targets_from_hand_numbers():
    full = {"samples_s": 10.0, "peak_bytes": 17 * GIB, "peak_above_weights_bytes": 2 * GIB}
    sweep = {"samples_s": 20.0, "peak_bytes": 18 * GIB, "peak_above_weights_bytes": 3 * GIB}
    assert add_ratios(sweep, full) == {"wall_ratio": True, "peak_above_weights_ratio": True}  # 2.0, 1.5
    assert (sweep["wall_ratio"], sweep["peak_above_weights_ratio"]) == (2.0, 1.5)
    sweep = {"samples_s": 20.5, "peak_bytes": 19 * GIB, "peak_above_weights_bytes": 4 * GIB}
    assert add_ratios(sweep, full) == {"wall_ratio": False, "peak_above_weights_ratio": False}
    assert sweep["peak_ratio"] == 19 / 17


def test_local_model_without_a_path_is_a_one_line_error(tmp_path):
    from eval.compose import compose_config
    from eval.runner import run

    cfg = compose_config(["model=local", "method=full", f"output_root={tmp_path}"])
    with pytest.raises(UserError) as err:
        run(cfg)
    assert "path" in str(err.value) and "\n" not in str(err.value)
    cfg = compose_config(["model=local", f"model.path={tmp_path / 'absent'}", "method=full"])
    with pytest.raises(UserError, match="does not exist"):
        run(cfg)
    assert not any(tmp_path.iterdir())  # refused before any run folder


@pytest.fixture(scope="module")
def tiny():
    model = random_llama({**TINY, "vocab_size": 128}, torch.float32, "cpu", seed=3)
    ids = torch.randint(0, 128, (1, 96), generator=torch.Generator().manual_seed(4))
    return model, ids


def test_full_cache_of_a_shared_prefill_reuses_the_captured_tensors(tiny):
    from transformers import DynamicCache

    from lava.prefill import capture_prefill

    model, ids = tiny
    capture, _ = capture_prefill(model, ids, 8)  # the last 8 queries
    cache = capture.to_dynamic(model)
    reference = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=reference, use_cache=True)
    for source, layer, ref in zip(capture.layers, cache.layers, reference.layers):
        assert layer.keys.data_ptr() == source.full_keys.data_ptr()  # a view, not a copy
        assert layer.values.data_ptr() == source.full_values.data_ptr()
        assert torch.equal(layer.keys, ref.keys) and torch.equal(layer.values, ref.values)
    assert cache.get_seq_length() == ids.shape[1]


def test_each_cache_is_dropped_once_decoded_full_first(tiny):
    from eval.sweep import decode_all, shared_prefill

    model, ids = tiny
    methods = [build_named_method(name, 40) for name in ("snapkv", "lava")]
    swept = [*methods, None, build_named_method("adakv", 56)]  # the full cache in the middle of the list
    kept = shared_prefill(model, ids, swept, 6)
    expected = decode_all(model, kept, swept, 6, [], 6, max_batch=2)
    assert all(c is not None for c in kept.caches)  # without on_done every cache stays
    prefill = shared_prefill(model, ids, swept, 6)
    seen: list[tuple[int, list[bool]]] = []

    def on_done(i, gen, cache):
        assert cache is not None and gen.token_ids == expected[i].token_ids
        seen.append((i, [c is not None for c in prefill.caches]))

    gens = decode_all(model, prefill, swept, 6, [], 6, max_batch=2, on_done=on_done)
    assert [g.token_ids for g in gens] == [g.token_ids for g in expected]
    assert seen[0] == (2, [True, True, True, True])  # the full cache decodes first, alone
    # Batches of 2 compressed caches after it: the full cache is gone, and so is each earlier batch.
    assert seen[1:] == [(0, [True, True, False, True]), (1, [False, True, False, True]),
                        (3, [False, False, False, True])]  # fmt: skip
    assert prefill.caches == [None] * 4
