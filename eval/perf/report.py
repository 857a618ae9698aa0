"""The perf benchmark's outputs: column meanings, the markdown table, the plot, the README of a run."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

# Column documentation of perf.csv (also written to docs/perf.md).
COLUMNS: dict[str, str] = {
    "length": "prompt tokens (Paul Graham essays, tokenized, cut to this length)",
    "method": "method config name (configs/method/<method>.yaml); `full` = uncompressed DynamicCache; `full@budget` = uncompressed DynamicCache on the prompt's first `budget` tokens (the physical limit of that budget)",
    "attn": "attention implementation: `sdpa` (transformers' native) or `lava` (this library's)",
    "budget_spec": "budget as given on the command line (`128`, `10pct`); empty for full",
    "budget": "resolved budget B0 (entries per KV head per layer, window included); empty for full",
    "compressed": "whether the cache evicted anything (False when the prompt fits in the budget)",
    "repeats": "timed runs whose median is reported",
    "prefill_s": "median wall time of the prompt forward pass, per-layer compression included",
    "compress_s": "median time of scoring + allocation (layer and head budgets, packing) summed over layers, from CompressedCache.timings",
    "prefill_overhead_s": "prefill_s minus the reference full-cache prefill_s on the same prompt",
    "prefill_ratio": "prefill_s / reference prefill_s (target <= 1.10)",
    "decode_s": "median wall time of the decode steps (new_tokens - 1 forward passes; the first token comes from the prefill)",
    "decode_tok_s": "decode tokens per second: (new_tokens - 1) / decode_s",
    "decode_speedup": "decode_tok_s / reference decode_tok_s",
    "decode_vs_ceiling": "decode_tok_s / decode_tok_s of full@budget (same length and budget): 1.0 = as fast as a cache that only ever held `budget` tokens per head",
    "cache_bytes": "bytes of the stored prompt keys and values (compressed: report()['cache_bytes']; full: DynamicCache key/value tensors over the prompt positions); decode tail excluded",
    "memory_ratio": "cache_bytes / reference cache_bytes",
    "kept_entries": "stored prompt entries summed over layers and KV heads (full: layers x kv_heads x length)",
    "prefill_cpu_s": "median process CPU time (all threads, time.process_time) of the prefill forward pass; robust to other processes taking the cores, unlike wall time",
    "compress_cpu_s": "median process CPU time of scoring + allocation (CompressedCache.timings)",
    "prefill_cpu_ratio": "prefill_cpu_s / reference prefill_cpu_s",
    "decode_cpu_s": "median process CPU time of the decode steps",
    "decode_cpu_speedup": "reference decode_cpu_s / decode_cpu_s (same number of steps): the decode speedup in CPU work",
    "rss_peak_mb": "peak resident set size of the process during the run (MiB), sampled by a psutil thread every --rss-interval seconds (in-process, not ru_maxrss); median over repeats",
    "rss_delta_mb": "rss_peak_mb minus the RSS just before the run (after gc and malloc_trim): the run's own peak working memory; median over repeats",
    "rss_delta_ratio": "rss_delta_mb / reference rss_delta_mb",
    "tokens_match_full": "leading generated tokens identical to the reference's (out of new_tokens)",
    "new_tokens": "generated tokens per run (no stop tokens)",
    "threads": "torch.set_num_threads",
}


def write_plot(table: Any, path: Path) -> None:
    """Per budget (columns): decode tokens/s, decode speedup vs full/sdpa, prompt KV MiB vs prompt length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [s for s in dict.fromkeys(table["budget_spec"]) if s != ""] or [""]
    rows_spec = [
        ("decode_tok_s", "decode tokens/s", 1.0, False),
        ("decode_speedup", "decode speedup vs full (sdpa)", 1.0, False),
        ("cache_bytes", "prompt KV cache (MiB)", 1.0 / 2**20, True),
    ]
    fig, axes = plt.subplots(3, len(specs), figsize=(4.6 * len(specs), 10), squeeze=False, sharex=True)
    full = table[(table["method"] == "full")]
    methods = [m for m in dict.fromkeys(table["method"]) if m != "full"]
    cmap = plt.get_cmap("tab10")
    for col, spec in enumerate(specs):
        for row, (key, label, scale, log) in enumerate(rows_spec):
            ax = axes[row][col]
            for attn, style in (("sdpa", "k-"), ("lava", "k:")):
                ref = full[full["attn"] == attn].sort_values("length")
                if len(ref):
                    ax.plot(ref["length"], ref[key] * scale, style, marker="o", label=f"full ({attn})")
            for i, name in enumerate(methods):
                sel = table[(table["method"] == name) & (table["budget_spec"] == spec)].sort_values("length")
                if len(sel):
                    ax.plot(sel["length"], sel[key] * scale, marker=".", color=cmap(i % 10), label=name)
            ax.set_ylabel(label)
            ax.set_xscale("log", base=2)
            if log:
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
        axes[0][col].set_title(f"budget {spec or '-'}")
        axes[-1][col].set_xlabel("prompt length (tokens)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(
        "Decode speed and prompt KV size vs prompt length (medians). Absolute tokens/s follow the machine's\n"
        "load at the time; speedups compare runs of the same prompt measured side by side.",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(table: Any) -> str:
    import pandas as pd

    from eval.frames import markdown_table as to_markdown

    rows = []
    for r in table.itertuples(index=False):
        budget = (
            f"{r.budget} ({r.budget_spec})"
            if r.budget_spec and not r.budget_spec.isdigit()
            else str(r.budget)
        )
        rows.append(
            {
                "length": str(r.length), "method": r.method, "attn": r.attn, "budget": budget or "-",
                "prefill s": f"{r.prefill_s:.2f}", "compress s": f"{r.compress_s:.3f}",
                "prefill ratio": f"{r.prefill_ratio:.3f}", "prefill CPU ratio": f"{r.prefill_cpu_ratio:.3f}",
                "decode tok/s": f"{r.decode_tok_s:.2f}", "decode speedup": f"{r.decode_speedup:.2f}x",
                "decode CPU speedup": f"{r.decode_cpu_speedup:.2f}x",
                "vs ceiling": "-" if r.decode_vs_ceiling != r.decode_vs_ceiling else f"{r.decode_vs_ceiling:.2f}",
                "cache MiB": f"{r.cache_bytes / 2**20:.2f}", "memory ratio": f"{r.memory_ratio:.3f}",
                "kept": str(r.kept_entries), "RSS delta MiB": f"{r.rss_delta_mb:.0f}",
                "match": f"{r.tokens_match_full}/{r.new_tokens}",
            }
        )  # fmt: skip
    return to_markdown(pd.DataFrame(rows), index=False).rstrip("\n")


def write_readme(table: Any, path: Path, meta: dict[str, Any]) -> None:
    text = [
        "# Performance: prefill, compression overhead, decode speed, cache size",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Commit {meta['commit']}. Model {meta['model']} ({meta['dtype']}), torch {meta['torch']} on {meta['cpu']}, "
        f"{meta['threads']} torch threads (OMP_WAIT_POLICY={meta['omp_wait_policy']}), {meta['repeats']} repeats (median), {meta['new_tokens']} new tokens, "
        f"load average {meta['load_start']:.1f} at start / {meta['load_end']:.1f} at end on {meta['cores']} cores. "
        f"Wall time {meta['wall_s'] / 60:.1f} min.",
        "",
        "Ratios are against `full` with `sdpa` attention on the same prompt in the same run. "
        "Absolute times depend on machine load; compare ratios. Columns: see docs/perf.md.",
        "",
        markdown_table(table),
        "",
        "![decode tokens/s and cache bytes](perf.png)",
        "",
    ]
    path.write_text("\n".join(text))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
