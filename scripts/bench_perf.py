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
prompt length) and ``README.md`` (a markdown table). Column meanings are in :data:`eval.perf.report.COLUMNS` and
docs/perf.md.

Examples
--------
    make bench-perf ARGS="--quick"
    python scripts/bench_perf.py --lengths 1024 4096 --budgets 128 512 10pct
    python scripts/bench_perf.py --methods full lava adakv --lengths 4096 --budgets 10pct
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable as `python scripts/bench_perf.py` from anywhere
    sys.path.insert(0, str(ROOT))

from eval.method_configs import method_names, resolve_methods  # noqa: E402
from eval.perf.grid import CEILING, REFERENCE, aggregate, budget_sort, configurations, resolve_budget  # noqa: E402
from eval.perf.report import COLUMNS  # noqa: E402
from lava.errors import UserError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["all"],
        metavar="M",
        help=f"method configs to run, or all (default): {' '.join(method_names())}; "
        "full/sdpa always runs as the reference",
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
    try:
        args.methods = resolve_methods(args.methods)
    except UserError as exc:
        p.error(f"--methods: {exc}")
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

    from eval.frames import write_csv
    from eval.perf.measure import Runner, prompt_ids
    from eval.perf.report import cpu_name, markdown_table, write_plot, write_readme
    from eval.provenance import commit_label
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
    commit = commit_label()  # at start: the code the run imports

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
    names = method_names()
    order_key = {
        m: i for i, m in enumerate([REFERENCE[0], CEILING, *(n for n in names if n != REFERENCE[0])])
    }
    table["_o"] = table["method"].map(order_key) + (table["attn"] == "lava") * 0.5
    table = table.sort_values(["length", "budget_spec", "_o"], key=budget_sort).drop(columns="_o")
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


if __name__ == "__main__":
    sys.exit(main())
