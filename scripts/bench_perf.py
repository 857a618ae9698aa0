"""Performance benchmark of every compression method against the full cache (``make bench-perf``).

For each prompt length and budget, every method runs one greedy generation (prefill with
compression, then ``--new-tokens`` decode steps, no stop tokens) on the same prompt: Paul Graham
essays tokenized and cut to the length. The full cache runs twice per length: with the model's
native ``"sdpa"`` attention (the **reference**: every ratio is against it) and with the ``"lava"``
attention over a plain ``DynamicCache`` (which falls back to SDPA).

Timings are repeated ``--repeats`` times and the median is kept. Inside a repeat all
configurations of one prompt length run back to back (forward order in even repeats, reverse order
in odd ones), so every ratio compares runs measured side by side under the same machine load.

Outputs (in ``--out``, default ``results/perf``): ``perf.csv`` (one row per configuration, medians
and ratios), ``perf_raw.csv`` (one row per run), ``perf.png`` (decode tokens/s and cache bytes vs
prompt length) and ``README.md`` (a markdown table). Column meanings are in :data:`COLUMNS` and
docs/perf.md.

Examples
--------
    make bench-perf ARGS="--quick"
    python scripts/bench_perf.py --lengths 1024 4096 --budgets 128 512 10pct
    python scripts/bench_perf.py --methods full lava adakv --lengths 4096 --budgets 10pct
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable as `python scripts/bench_perf.py` from anywhere
    sys.path.insert(0, str(ROOT))

ALL_METHODS = [
    "full",
    "streamingllm",
    "snapkv",
    "pyramidkv",
    "adakv",
    "cake",
    "lava",
    "lava_layer_only",
    "lava_head_only",
]
REFERENCE = ("full", "sdpa")  # (method, attention implementation) every ratio is measured against
# The physical limit of a budget: the full cache (sdpa) on the prompt's first `budget` tokens, i.e. a cache
# of the same size with nothing to score, evict or mask. A compressing method cannot decode faster.
CEILING = "full@budget"

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
    "compress_s": "median time spent inside CompressedCache.compress_layer (scoring, allocation, packing), summed over layers",
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
    "compress_cpu_s": "median process CPU time inside compress_layer",
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


# ----------------------------------------------------------------------------------------------------------
# Measurement helpers
# ----------------------------------------------------------------------------------------------------------


class RssSampler:
    """Samples the process RSS in a background thread; ``peak`` is the maximum seen (bytes)."""

    def __init__(self, interval: float) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.baseline = self._proc.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss
            if rss > self.peak:
                self.peak = rss
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS baselines are comparable."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def resolve_budget(spec: str, length: int) -> int:
    """``"128"`` -> 128; ``"10pct"`` -> 10 % of the prompt length (rounded)."""
    if spec.endswith("pct"):
        return max(1, round(float(spec[:-3]) / 100.0 * length))
    return int(spec)


def build_method(name: str, budget: int, model_name: str) -> Any:
    """Instantiate ``configs/method/<name>.yaml`` with ``budget`` and ``model.name`` resolved (None for full)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "configs" / "method" / f"{name}.yaml")
    if "_target_" not in cfg:
        return None
    root = OmegaConf.create({"budget": budget, "model": {"name": model_name}, "method": cfg})
    return instantiate(root.method, _convert_="all")


def full_cache_stats(cache: Any, length: int) -> tuple[int, int]:
    """(bytes, entries) of a DynamicCache's keys and values over the first ``length`` positions."""
    total, entries = 0, 0
    for layer in cache.layers:
        for tensor in (layer.keys, layer.values):
            part = tensor[..., :length, :]
            total += part.numel() * part.element_size()
        entries += layer.keys.shape[0] * layer.keys.shape[1] * min(length, layer.keys.shape[2])
    return total, entries


def prompt_ids(tokenizer: Any, length: int) -> list[int]:
    """The first ``length`` tokens of the Paul Graham essays."""
    from eval.benchmarks.haystack import paul_graham_essays

    text = paul_graham_essays()
    chars = length * 6
    while True:
        ids = tokenizer.encode(text[:chars], add_special_tokens=False)
        if len(ids) >= length or chars >= len(text):
            break
        chars *= 2
    if len(ids) < length:
        raise SystemExit(f"the essays hold only {len(ids)} tokens; choose lengths <= that")
    return ids[:length]


# ----------------------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, model: Any, model_name: str, new_tokens: int, rss_interval: float) -> None:
        self.model = model
        self.model_name = model_name
        self.new_tokens = new_tokens
        self.rss_interval = rss_interval
        self._methods: dict[tuple[str, int], Any] = {}

    def method(self, name: str, budget: int | None) -> Any:
        key = (name, budget or 0)
        if key not in self._methods:
            self._methods[key] = build_method(name, budget or 0, self.model_name) if name != "full" else None
        return self._methods[key]

    def run(
        self, name: str, attn: str, budget: int | None, input_ids: Any, new_tokens: int | None = None
    ) -> dict:
        """One generation; returns its raw measurements."""
        from transformers import DynamicCache

        from eval.generation import greedy_generate

        new_tokens = new_tokens or self.new_tokens
        model = self.model
        if name == CEILING:
            name, input_ids = "full", input_ids[:, :budget]
        method = self.method(name, budget)
        release_memory()
        compress_time = [0.0, 0.0]  # wall, process CPU
        if method is None:
            if attn == "lava":
                from lava import attention

                attention.enable(model)  # registers "lava" (SDPA fallback for a DynamicCache)
            elif model.config._attn_implementation != attn:
                model.set_attn_implementation(attn)
            cache = DynamicCache(config=model.config)
        else:
            cache = method.make_cache(model, max_new_tokens=new_tokens)
            # Time the per-layer compression through an instance attribute (lava/ is untouched).
            cache.compress_layer = _timed(cache.compress_layer, compress_time)
        # Process CPU time (all threads) of the prefill and of the decode: the first forward call is the
        # prefill; less sensitive than wall time to other processes competing for the cores.
        cpu_marks: list[float] = []
        pre = model.register_forward_pre_hook(
            lambda *_: cpu_marks.append(time.process_time()) if not cpu_marks else None
        )
        post = model.register_forward_hook(
            lambda *_: cpu_marks.append(time.process_time()) if len(cpu_marks) == 1 else None
        )
        load = os.getloadavg()[0]
        try:
            with RssSampler(self.rss_interval) as rss:
                gen = greedy_generate(
                    model, input_ids, max_new_tokens=new_tokens, stop_ids=[], cache=cache, min_new_tokens=0
                )
            cpu_end = time.process_time()
        finally:
            pre.remove()
            post.remove()
        length = input_ids.shape[1]
        if method is None:
            cache_bytes, kept = full_cache_stats(cache, length)
            compressed = False
        else:
            report = cache.report()
            cache_bytes, kept, compressed = (
                report["cache_bytes"],
                report["kept_entries"],
                report["compressed"],
            )
        steps = len(gen.token_ids) - 1
        out = {
            "prefill_s": gen.prefill_seconds,
            "compress_s": compress_time[0],
            "decode_s": gen.decode_seconds,
            "decode_tok_s": steps / gen.decode_seconds if gen.decode_seconds > 0 else float("nan"),
            "prefill_cpu_s": cpu_marks[1] - cpu_marks[0],
            "compress_cpu_s": compress_time[1],
            "decode_cpu_s": cpu_end - cpu_marks[1],
            "cache_bytes": cache_bytes,
            "kept_entries": kept,
            "compressed": compressed,
            "rss_peak_mb": rss.peak / 2**20,
            "rss_delta_mb": (rss.peak - rss.baseline) / 2**20,
            "load1": load,
            "tokens": gen.token_ids,
        }
        del cache, gen
        return out


def _timed(fn: Callable, acc: list[float]) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[0] += time.perf_counter() - t0
            acc[1] += time.process_time() - c0

    return wrapper


# ----------------------------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------------------------


def configurations(
    methods: list[str], budgets: list[str], length: int, ceiling: bool = True
) -> list[tuple[str, str, str, int | None]]:
    """(method, attn, budget_spec, budget) of one prompt length; the sdpa reference first.

    With ``ceiling``, each budget shorter than the prompt also gets a ``full@budget`` run (the full
    cache on the first ``budget`` tokens), when at least one compressing method runs.
    """
    configs: list[tuple[str, str, str, int | None]] = [("full", "sdpa", "", None)]
    if "full" in methods:
        configs.append(("full", "lava", "", None))
    resolved: dict[int, str] = {}
    for spec in budgets:
        resolved.setdefault(resolve_budget(spec, length), spec)  # e.g. 10pct of 1280 == 128: once
    compressing = [name for name in methods if name != "full"]
    if ceiling and compressing:
        configs += [(CEILING, "sdpa", spec, b) for b, spec in resolved.items() if b < length]
    configs += [(name, "lava", spec, b) for name in compressing for b, spec in resolved.items()]
    return configs


def aggregate(raw: list[dict], threads: int, new_tokens: int) -> list[dict]:
    """Medians per configuration, ratios against the reference of the same length."""
    groups: dict[tuple, list[dict]] = {}
    for row in raw:
        groups.setdefault(
            (row["length"], row["method"], row["attn"], row["budget_spec"], row["budget"]), []
        ).append(row)
    med = {
        key: {k: statistics.median(r[k] for r in rows) for k in MEDIAN_KEYS} for key, rows in groups.items()
    }
    out = []
    for key, rows in groups.items():
        length, name, attn, spec, budget = key
        ref_key = next(k for k in groups if k[0] == length and (k[1], k[2]) == REFERENCE)
        ref, m = med[ref_key], med[key]
        ref_tokens = groups[ref_key][0]["tokens"]
        tokens = rows[0]["tokens"]
        match = next(
            (i for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=False)) if a != b),
            min(len(tokens), len(ref_tokens)),
        )
        ceiling_key = (length, CEILING, "sdpa", spec, budget)
        vs_ceiling = (
            m["decode_tok_s"] / med[ceiling_key]["decode_tok_s"]
            if ceiling_key in med and name != CEILING
            else float("nan")
        )
        out.append(
            {
                "length": length,
                "method": name,
                "attn": attn,
                "budget_spec": spec,
                "budget": budget if budget is not None else "",
                "compressed": rows[0]["compressed"],
                "repeats": len(rows),
                "prefill_s": m["prefill_s"],
                "compress_s": m["compress_s"],
                "prefill_overhead_s": m["prefill_s"] - ref["prefill_s"],
                "prefill_ratio": m["prefill_s"] / ref["prefill_s"],
                "decode_s": m["decode_s"],
                "decode_tok_s": m["decode_tok_s"],
                "decode_speedup": m["decode_tok_s"] / ref["decode_tok_s"],
                "decode_vs_ceiling": vs_ceiling,
                "cache_bytes": int(m["cache_bytes"]),
                "memory_ratio": m["cache_bytes"] / ref["cache_bytes"],
                "kept_entries": int(m["kept_entries"]),
                "prefill_cpu_s": m["prefill_cpu_s"],
                "compress_cpu_s": m["compress_cpu_s"],
                "prefill_cpu_ratio": m["prefill_cpu_s"] / ref["prefill_cpu_s"],
                "decode_cpu_s": m["decode_cpu_s"],
                "decode_cpu_speedup": ref["decode_cpu_s"] / m["decode_cpu_s"],
                "rss_peak_mb": m["rss_peak_mb"],
                "rss_delta_mb": m["rss_delta_mb"],
                "rss_delta_ratio": m["rss_delta_mb"] / ref["rss_delta_mb"]
                if ref["rss_delta_mb"] > 0
                else float("nan"),
                "tokens_match_full": match,
                "new_tokens": new_tokens,
                "threads": threads,
            }
        )
    return out


MEDIAN_KEYS = [
    "prefill_s",
    "compress_s",
    "decode_s",
    "decode_tok_s",
    "cache_bytes",
    "kept_entries",
    "rss_peak_mb",
    "rss_delta_mb",
    "prefill_cpu_s",
    "compress_cpu_s",
    "decode_cpu_s",
]


# ----------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------


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

    from eval.tables import markdown_table as to_markdown

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


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=ALL_METHODS,
        choices=ALL_METHODS,
        metavar="M",
        help=f"methods to run (default: all): {' '.join(ALL_METHODS)}; full/sdpa always runs as the reference",
    )
    p.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        default=[1024, 4096, 8160],
        help="prompt lengths in tokens (8160 + 32 new tokens = SmolLM2's 8192-token context)",
    )
    p.add_argument(
        "--budgets",
        nargs="+",
        default=["128", "512", "10pct"],
        help="budgets B0: integers, or '<p>pct' = p%% of the prompt length",
    )
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run (no stop tokens)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--model", default="configs/model/smollm2-135m.yaml", help="model config yaml")
    p.add_argument(
        "--out", default=None, help="output folder (default results/perf; outputs/perf-quick with --quick)"
    )
    p.add_argument("--rss-interval", type=float, default=0.005, help="RSS sampling period in seconds")
    p.add_argument(
        "--omp-wait-policy",
        default=None,
        help="OMP_WAIT_POLICY for torch's OpenMP threads (default: the environment's value, else PASSIVE; "
        "'' leaves it unset). On a loaded machine ACTIVE spinning makes 2 threads several times slower.",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up runs")
    p.add_argument(
        "--no-ceiling",
        action="store_true",
        help=f"skip the {CEILING} runs (full cache on the first `budget` tokens: the decode-speed limit)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke test: length 512, budget 128, 1 repeat, 8 new tokens"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--replot", action="store_true", help="only redraw perf.png from the perf.csv in --out")
    args = p.parse_args(argv)  # fmt: skip
    if args.quick:
        args.lengths, args.budgets, args.repeats, args.new_tokens = [512], ["128"], 1, 8
    if args.out is None:
        args.out = "outputs/perf-quick" if args.quick else "results/perf"
    for spec in args.budgets:
        try:
            resolve_budget(spec, 1000)
        except ValueError:
            p.error(f"--budgets: {spec!r} is neither an integer nor '<p>pct'")
    if args.new_tokens < 2:
        p.error("--new-tokens must be at least 2 (decode speed needs a decode step)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    policy = (
        args.omp_wait_policy
        if args.omp_wait_policy is not None
        else os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    )
    if policy:
        os.environ["OMP_WAIT_POLICY"] = policy  # read when torch loads its OpenMP runtime: set before import
    if "torch" in sys.modules and policy:
        print("[bench-perf] torch was imported before OMP_WAIT_POLICY could be set", file=sys.stderr)
    import pandas as pd
    import torch
    import yaml
    from tqdm import tqdm

    from eval.tables import write_csv
    from lava.models import as_spec, load_model

    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    if args.replot:
        write_plot(pd.read_csv(out / "perf.csv", keep_default_na=False), out / "perf.png")
        return 0
    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    commit = git_commit()  # at start: the code the run imports

    model_cfg = yaml.safe_load((ROOT / args.model).read_text())
    spec = as_spec(model_cfg)
    model, tokenizer = load_model(model_cfg)
    runner = Runner(model, spec.name, args.new_tokens, args.rss_interval)

    grid = {
        length: configurations(args.methods, args.budgets, length, not args.no_ceiling)
        for length in args.lengths
    }
    prompts = {length: torch.tensor([prompt_ids(tokenizer, length)]) for length in args.lengths}

    if not args.no_warmup:  # first calls of each code path (allocator, kernels, lazy imports) are untimed
        warm = torch.tensor([prompt_ids(tokenizer, 256)])
        done: set[tuple[str, str]] = set()
        for name, attn, _, budget in grid[args.lengths[0]]:
            if (name, attn) in done:
                continue
            done.add((name, attn))
            runner.run(name, attn, min(budget or 128, 128), warm, new_tokens=4)

    total = sum(len(c) for c in grid.values()) * args.repeats
    bar = tqdm(total=total, desc="bench-perf", unit="run", disable=args.no_progress, dynamic_ncols=True)
    raw: list[dict] = []
    for length in args.lengths:  # in the user's order; the configurations of one length interleave
        configs = grid[length]
        if not args.no_warmup:  # first prefill at a new length pays for first-touch pages: untimed
            bar.set_postfix_str(f"L={length} warm-up")
            runner.run("full", "sdpa", None, prompts[length], new_tokens=2)
        for rep in range(args.repeats):
            order = configs if rep % 2 == 0 else configs[::-1]
            for name, attn, bspec, budget in order:
                bar.set_postfix_str(f"L={length} {name}/{attn} b={budget or '-'} r={rep}")
                row = runner.run(name, attn, budget, prompts[length])
                raw.append(
                    {"length": length, "method": name, "attn": attn, "budget_spec": bspec, "budget": budget,
                     "repeat": rep, **row}
                )  # fmt: skip
                bar.update()
    bar.close()

    table = pd.DataFrame(aggregate(raw, args.threads, args.new_tokens))
    order_key = {m: i for i, m in enumerate([ALL_METHODS[0], CEILING, *ALL_METHODS[1:]])}
    table["_o"] = table["method"].map(order_key) + (table["attn"] == "lava") * 0.5
    table = table.sort_values(["length", "budget_spec", "_o"], key=_budget_sort).drop(columns="_o")
    table = table[list(COLUMNS)]
    write_csv(table, out / "perf.csv")
    write_csv(
        pd.DataFrame([{k: v for k, v in r.items() if k != "tokens"} for r in raw]), out / "perf_raw.csv"
    )
    write_plot(table, out / "perf.png")
    meta = {
        "command": "python scripts/bench_perf.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": spec.name,
        "dtype": spec.dtype,
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "commit": commit,
        "cores": os.cpu_count(),
        "threads": args.threads,
        "omp_wait_policy": policy or "(unset)",
        "repeats": args.repeats,
        "new_tokens": args.new_tokens,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "wall_s": time.perf_counter() - t_start,
    }
    write_readme(table, out / "README.md", meta)
    print(markdown_table(table))
    print(f"\nwrote {out / 'perf.csv'}, perf_raw.csv, perf.png, README.md in {meta['wall_s'] / 60:.1f} min")
    return 0


def git_commit() -> str:
    """Short HEAD commit, with ``+dirty`` when lava/ or eval/ have uncommitted changes."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "lava", "eval"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _budget_sort(col: Any) -> Any:
    """Sort budget specs numerically with ``<p>pct`` last and full's empty spec first."""
    if col.name != "budget_spec":
        return col
    return col.map(lambda s: -1 if s == "" else (10**9 + float(s[:-3]) if s.endswith("pct") else float(s)))


if __name__ == "__main__":
    sys.exit(main())
