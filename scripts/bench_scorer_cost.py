"""What each method's scorer costs on top of the prefill, against SnapKV (``make bench-scorer-cost``).

Every method of the registry (``configs/method/*.yaml``; ``--methods all``) is measured the way a
sweep builds its cache from one prompt (docs/sweep.md), phase by phase:

- ``prefill_s``: the full-attention capture (:func:`lava.prefill.capture_prefill`), keeping the
  last prompt queries the method's scorer reads (:func:`lava.prefill.capture_queries`; every query
  for H2O and expected attention, which makes their capture larger);
- ``scoring_s``: the wall time of :func:`lava.prefill.score_methods` for this method alone (every
  global layer once; a scorer that runs extra forward passes, as KVzip's reconstruction does, pays
  for them here);
- ``build_s``: :func:`lava.prefill.build_cache_from_capture` (layer and head allocation, packing the
  kept entries); for the full cache, handing the capture over as a ``DynamicCache``;
- ``total_s``: the three together, per repeat.

The prompt is the first ``--tokens`` tokens of the Paul Graham essays (as ``make bench-perf``),
one budget for every method. After one untimed warm-up round, each repeat runs every method once,
round-robin (reversed on odd repeats), so a slow spell of the machine hits all methods alike;
``x_snapkv`` is a method's total over SnapKV's total **of the same repeat**, median and range over
repeats (SnapKV always runs: it is the reference). With ``--single`` each repeat also times the
single-run path: ``CompressionMethod.build_cache`` and one prefill forward with online compression.

Outputs in ``--out`` (default ``results/perf``): ``scorer_cost.csv`` (medians, one row per method),
``scorer_cost.md`` (the table, with the machine, torch version, threads, repeats, prompt tokens
and commit above it) and ``scorer_cost_raw.csv`` (one row per method and repeat).

Examples
--------
    make bench-scorer-cost
    python scripts/bench_scorer_cost.py --methods snapkv,h2o,expected_attention --repeats 3 --out /tmp/cost
    python scripts/bench_scorer_cost.py --device cuda --single
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable as `python scripts/bench_scorer_cost.py` from anywhere
    sys.path.insert(0, str(ROOT))

from eval.method_configs import method_names, resolve_methods  # noqa: E402
from lava.errors import UserError  # noqa: E402

REFERENCE = "snapkv"  # every ratio is against this method's total in the same repeat
RESERVE = 32  # decode entries preallocated per head, as a sweep with 32 new tokens does
PHASES = ("prefill_s", "scoring_s", "build_s")

#: Columns of scorer_cost.csv (docs/perf.md).
COLUMNS: dict[str, str] = {
    "method": "method config name (configs/method/<method>.yaml)",
    "scorer": "the scorer's class; `-` for the full cache",
    "queries": "last prompt queries the capture keeps per layer for the scorer (`all`: every one)",
    "prefill_s": "median wall time of the full-attention capture",
    "scoring_s": "median wall time of score_methods for this method alone",
    "build_s": "median wall time of build_cache_from_capture (allocation and packing)",
    "total_s": "median over repeats of prefill_s + scoring_s + build_s of one repeat",
    "total_min_s": "fastest repeat's total",
    "total_max_s": "slowest repeat's total",
    "x_snapkv": "median over repeats of total / snapkv's total of the same repeat",
    "x_snapkv_min": "smallest per-repeat ratio",
    "x_snapkv_max": "largest per-repeat ratio",
    "single_s": "median wall time of the single-run path (build_cache + prefill forward); only with --single",
    "single_x_snapkv": "median per-repeat single_s / snapkv's single_s; only with --single",
    "repeats": "timed repeats",
    "tokens": "prompt tokens",
    "budget": "budget B0 (entries per KV head per layer, window included); empty for the full cache",
}


def fail(message: str) -> None:
    """Exit with a one-line error (before anything heavy is loaded)."""
    raise SystemExit(f"bench_scorer_cost.py: error: {message}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=2048, help="prompt tokens (default 2048)")
    p.add_argument("--budget", type=int, default=128, help="budget B0 of every method (default 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds over all methods (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument(
        "--methods",
        default="all",
        help=f"comma-separated method configs, or all (default): {','.join(method_names())}; "
        f"{REFERENCE} always runs (the reference)",
    )
    p.add_argument("--out", default="results/perf", help="output folder (default results/perf)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--model", default="configs/model/smollm2-135m.yaml", help="model config yaml")
    p.add_argument("--single", action="store_true", help="also time the single-run path per method")
    args = p.parse_args(argv)
    try:
        names = resolve_methods(
            "all" if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
        )
    except UserError as exc:
        fail(f"--methods: {exc}")
    args.methods = names if REFERENCE in names else [REFERENCE, *names]
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        fail("--repeats and --threads must be at least 1, --warmup at least 0")
    if args.tokens <= args.budget:
        fail(f"--tokens {args.tokens} must exceed --budget {args.budget} (else nothing is evicted or scored)")
    return args


def build_methods(names: list[str], budget: int, model_name: str) -> dict[str, Any]:
    """Each method at ``budget`` (None for the full cache); a bad config is a one-line exit."""
    from eval.method_configs import build_named_method

    methods = {}
    for name in names:
        try:
            methods[name] = build_named_method(name, budget, model_name)
        except UserError as exc:
            fail(f"method {name}: {exc}")
    return methods


def measure_sweep_path(model: Any, method: Any, input_ids: Any) -> dict[str, float]:
    """One capture, scoring and build of ``method`` (None: the full cache), timed phase by phase.

    Parameters
    ----------
    input_ids : Tensor, shape (1, n)
    """
    from lava.policy import scorer_key
    from lava.prefill import (
        build_cache_from_capture,
        capture_prefill,
        capture_queries,
        score_methods,
        synchronize,
    )

    methods = [] if method is None else [method]
    t0 = time.perf_counter()
    capture, logits = capture_prefill(model, input_ids, capture_queries(methods))
    synchronize(logits)
    t1 = time.perf_counter()
    scored, _ = score_methods(capture, methods) if methods else ({}, {})  # the full cache scores nothing
    synchronize(input_ids)
    t2 = time.perf_counter()
    if method is None:
        cache = capture.to_dynamic(model)  # no copy: the full cache is the capture itself
    else:
        cache = build_cache_from_capture(method, capture, scored.get(scorer_key(method)), RESERVE)
    synchronize(input_ids)
    t3 = time.perf_counter()
    capture.release()
    del cache, scored
    return {"prefill_s": t1 - t0, "scoring_s": t2 - t1, "build_s": t3 - t2}


def measure_single_path(model: Any, method: Any, input_ids: Any) -> float:
    """Wall time of a single run's prefill: the cache built, then one forward with online compression."""
    import torch
    from transformers import DynamicCache

    from lava import attention
    from lava.compat import cache_kwargs
    from lava.prefill import synchronize

    t0 = time.perf_counter()
    if method is None:
        attention.enable(model)  # the same attention as the capture ("lava" falls back to SDPA here)
        cache = DynamicCache(config=model.config)
    else:
        cache = method.build_cache(model, max_new_tokens=RESERVE)
    with torch.inference_mode():
        out = model(input_ids=input_ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    synchronize(out.logits)
    seconds = time.perf_counter() - t0
    del cache, out
    return seconds


def summarize(raw: list[dict], methods: list[str], describe: dict[str, tuple[str, str]]) -> Any:
    """Per method: phase medians, total median and range, and the ratio to SnapKV paired by repeat.

    Parameters
    ----------
    raw : list of dict
        One row per (method, repeat): ``method``, ``repeat``, the :data:`PHASES` and optionally
        ``single_s``.
    methods : list of str
        Row order.
    describe : dict
        ``method -> (scorer, queries)`` labels.
    """
    import pandas as pd

    by_repeat = {(r["method"], r["repeat"]): r for r in raw}
    total = {key: sum(r[p] for p in PHASES) for key, r in by_repeat.items()}
    single = "single_s" in raw[0]
    rows = []
    for name in methods:
        mine = [r for r in raw if r["method"] == name]
        totals = [total[(name, r["repeat"])] for r in mine]
        ratios = [total[(name, r["repeat"])] / total[(REFERENCE, r["repeat"])] for r in mine]
        row = {"method": name, "scorer": describe[name][0], "queries": describe[name][1]}
        row |= {p: statistics.median(r[p] for r in mine) for p in PHASES}
        row |= {
            "total_s": statistics.median(totals),
            "total_min_s": min(totals),
            "total_max_s": max(totals),
            "x_snapkv": statistics.median(ratios),
            "x_snapkv_min": min(ratios),
            "x_snapkv_max": max(ratios),
        }
        if single:
            row["single_s"] = statistics.median(r["single_s"] for r in mine)
            row["single_x_snapkv"] = statistics.median(
                r["single_s"] / by_repeat[(REFERENCE, r["repeat"])]["single_s"] for r in mine
            )
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_view(table: Any) -> Any:
    """The table as the Markdown shows it: phase medians, then total and ratio with their range."""
    import pandas as pd

    rows = []
    for r in table.itertuples(index=False):
        row = {
            "method": r.method,
            "scorer": r.scorer,
            "prefill s": f"{r.prefill_s:.3f}",
            "scoring s": f"{r.scoring_s:.4f}",
            "build s": f"{r.build_s:.4f}",
            "total s": f"{r.total_s:.3f} [{r.total_min_s:.3f}, {r.total_max_s:.3f}]",
            "x SnapKV": f"{r.x_snapkv:.3f} [{r.x_snapkv_min:.3f}, {r.x_snapkv_max:.3f}]",
        }
        if "single_s" in table.columns:
            row["single s"] = f"{r.single_s:.3f}"
            row["single x SnapKV"] = f"{r.single_x_snapkv:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Read when torch loads its OpenMP runtime; spinning threads slow a shared machine (docs/perf.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import pandas as pd
    import torch
    import yaml

    from eval.frames import write_csv, write_frame
    from eval.perf.measure import prompt_ids
    from eval.perf.memory import release_memory
    from eval.perf.report import cpu_name
    from eval.provenance import commit_label
    from lava.models import as_spec, load_model
    from lava.policy import queries_read

    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is visible")
    model_cfg = yaml.safe_load((ROOT / args.model).read_text())
    spec = as_spec(model_cfg)
    methods = build_methods(args.methods, args.budget, spec.name)  # config errors before the model loads
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    commit = commit_label()  # at start: the code this run imports
    load_start = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    torch.set_num_threads(args.threads)

    model, tokenizer = load_model(model_cfg)
    model.to(args.device)
    input_ids = torch.tensor([prompt_ids(tokenizer, args.tokens)], device=args.device)

    def one(name: str) -> dict[str, float]:
        release_memory()
        row = measure_sweep_path(model, methods[name], input_ids)
        if args.single:
            row["single_s"] = measure_single_path(model, methods[name], input_ids)
        return row

    width = max(map(len, args.methods))
    for w in range(args.warmup):  # first calls of each code path (allocator, kernels, lazy imports)
        for name in args.methods:
            one(name)
            print(f"[scorer-cost] warm-up {w + 1}/{args.warmup} {name}", flush=True)
    raw: list[dict] = []
    for rep in range(args.repeats):
        order = args.methods if rep % 2 == 0 else args.methods[::-1]
        for name in order:
            row = {"method": name, "repeat": rep, **one(name)}
            raw.append(row)
            single = f"  single {row['single_s']:.3f} s" if args.single else ""
            print(
                f"[scorer-cost] repeat {rep + 1}/{args.repeats} {name:<{width}}  prefill {row['prefill_s']:.3f} s"
                f"  scoring {row['scoring_s']:.4f} s  build {row['build_s']:.4f} s{single}",
                flush=True,
            )

    describe = {}
    for name, method in methods.items():
        if method is None:
            describe[name] = ("-", "1")
        else:
            count = queries_read(method)
            describe[name] = (type(method.scorer).__name__, "all" if count is None else str(count))
    table = summarize(raw, args.methods, describe)
    table["repeats"] = args.repeats
    table["tokens"] = args.tokens
    table["budget"] = [None if methods[m] is None else args.budget for m in table["method"]]
    table["budget"] = table["budget"].astype("Int64")
    machine = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    command = "python scripts/bench_scorer_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [
        f"Cost per scorer at {args.tokens} tokens, budget {args.budget}, against {REFERENCE} "
        "(scripts/bench_scorer_cost.py)",
        f"Machine: {machine} ({args.device}), {os.cpu_count()} cores, {args.threads} torch threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; torch {torch.__version__}; "
        f"model {spec.name} ({spec.dtype}).",
        f"Commit {commit}; started {started}; load average {load_start:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end.",
        f"Prompt: {args.tokens} tokens of the Paul Graham essays; {args.repeats} repeats after "
        f"{args.warmup} warm-up round(s), methods round-robin (reversed on odd repeats).",
        "Phases are medians over repeats; total s and x SnapKV: median [min, max] over repeats, the ratio "
        f"taken against {REFERENCE}'s total of the same repeat. Columns: docs/perf.md.",
        f"Command: `{command}`",
    ]
    out.mkdir(parents=True, exist_ok=True)
    paths = write_frame(
        table,
        out / "scorer_cost",
        index=False,
        header=header,
        markdown=markdown_view(table),
        left=2,
        digits=6,
    )
    paths.append(write_csv(pd.DataFrame(raw), out / "scorer_cost_raw.csv", header=header))
    print((out / "scorer_cost.md").read_text())
    print("wrote", *map(str, paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
