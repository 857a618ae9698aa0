"""The perf benchmark's grid and ratios (eval/perf/grid.py), on hand-made measurements."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from eval.method_configs import method_names
from eval.perf import grid as bench_perf
from eval.perf.memory import kv_size

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench_perf as cli  # noqa: E402


def test_configurations_reference_first_ceiling_per_budget_and_duplicates_once():
    configs = bench_perf.configurations(["full", "lava", "adakv"], ["128", "10pct", "2000"], 1280)
    assert configs[0] == ("full", "sdpa", "", None)
    assert configs[1] == ("full", "lava", "", None)
    # 10pct of 1280 == 128 runs once; 2000 >= the prompt has no ceiling (nothing to evict)
    assert configs[2:] == [
        ("full@budget", "sdpa", "128", 128),
        ("lava", "lava", "128", 128),
        ("lava", "lava", "2000", 2000),
        ("adakv", "lava", "128", 128),
        ("adakv", "lava", "2000", 2000),
    ]
    assert bench_perf.configurations(["full"], ["128"], 1280) == [
        ("full", "sdpa", "", None),
        ("full", "lava", "", None),
    ]
    assert not any(
        c[0] == "full@budget" for c in bench_perf.configurations(["lava"], ["128"], 1280, ceiling=False)
    )


def _row(method, attn, spec, budget, prefill, decode_tok_s, cache_bytes, tokens, repeat=0):
    return {
        "length": 1000, "method": method, "attn": attn, "budget_spec": spec, "budget": budget, "repeat": repeat,
        "prefill_s": prefill, "compress_s": 0.0, "decode_s": 31 / decode_tok_s, "decode_tok_s": decode_tok_s,
        "cache_bytes": cache_bytes, "kept_entries": cache_bytes // 8, "rss_peak_mb": 100.0, "rss_delta_mb": 10.0,
        "prefill_cpu_s": prefill, "compress_cpu_s": 0.0, "decode_cpu_s": 31 / decode_tok_s, "compressed": True,
        "tokens": tokens,
    }  # fmt: skip


def test_aggregate_medians_and_ratios_by_hand():
    raw = [
        _row("full", "sdpa", "", None, 10.0, 5.0, 8000, [1, 2, 3, 4]),
        _row("full", "sdpa", "", None, 12.0, 4.0, 8000, [1, 2, 3, 4], repeat=1),
        _row("full", "sdpa", "", None, 11.0, 6.0, 8000, [1, 2, 3, 4], repeat=2),
        _row("full@budget", "sdpa", "100", 100, 1.0, 10.0, 800, [9, 9, 9, 9]),
        _row("lava", "lava", "100", 100, 11.0, 8.0, 800, [1, 2, 7, 4]),
    ]
    table = {(r["method"], r["attn"]): r for r in bench_perf.aggregate(raw, threads=2, new_tokens=4)}
    ref, lava, ceiling = table[("full", "sdpa")], table[("lava", "lava")], table[("full@budget", "sdpa")]
    assert ref["repeats"] == 3 and ref["prefill_s"] == 11.0 and ref["decode_tok_s"] == 5.0  # medians
    assert lava["prefill_ratio"] == 1.0 and lava["prefill_overhead_s"] == 0.0
    assert lava["decode_speedup"] == 8.0 / 5.0
    assert lava["decode_vs_ceiling"] == 0.8
    assert lava["memory_ratio"] == 0.1
    assert lava["tokens_match_full"] == 2  # first difference at index 2
    assert ceiling["decode_speedup"] == 2.0 and math.isnan(ceiling["decode_vs_ceiling"])
    assert math.isnan(ref["decode_vs_ceiling"])


def test_kv_size_of_a_plain_cache_counts_the_prompt_positions_only():
    # 2 layers of (B=1, Hkv=3, T=10, d=4) fp32 keys and values, prompt of 8 tokens (2 decode steps)
    layer = SimpleNamespace(keys=torch.zeros(1, 3, 10, 4), values=torch.zeros(1, 3, 10, 4))
    size = kv_size(SimpleNamespace(layers=[layer, layer]), prompt_len=8)
    assert size["cache_bytes"] == 2 * 2 * 3 * 8 * 4 * 4  # layers x (K, V) x heads x positions x d x 4 bytes
    assert size["kept_entries"] == 2 * 3 * 8 and size["compressed"] is False


def test_kv_size_of_a_compressing_cache_is_its_own_report():
    report = {"cache_bytes": 123, "kept_entries": 7, "compressed": True}
    assert kv_size(SimpleNamespace(report=lambda: report), prompt_len=8) == report


def test_cli_methods_come_from_the_registry():
    assert cli.parse_args([]).methods == method_names()
    assert cli.parse_args(["--methods", "lava", "full", "lava"]).methods == ["lava", "full"]
    with pytest.raises(SystemExit):
        cli.parse_args(["--methods", "no_such_method"])
