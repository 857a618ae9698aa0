"""Fidelity of every method x budget on the same samples, with intervals over samples and paired to SnapKV.

    python scripts/fidelity_report.py --out /tmp/fid_out                 # measure (resumable) + report
    python scripts/fidelity_report.py --out /tmp/fid_out --report-only   # rebuild the tables

Every configuration runs in one sweep (``run.py bench=fidelity methods=all budgets=[...]``: one
prefill per sample, the compressed caches teacher-forced together) into ``<out>/runs``, whose run
folders are the same as single runs' and resume the same way when killed. The report is
``<out>/fidelity_report.md``: mean and 95% bootstrap interval of kl, top1, nll_delta and attn_err per
method and budget, the paired interval of each method's difference to snapkv at the same budget, and
the mean layer-wise attention error of lava, adakv and snapkv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.method_configs import display_order  # noqa: E402
from eval.stats import bootstrap_ci, paired_bootstrap_ci, separated  # noqa: E402

METHODS = display_order()  # every method config (eval.method_configs), the full cache first
METRICS = ["kl", "top1", "nll_delta", "attn_err"]


def sweep_overrides(args: argparse.Namespace) -> list[str]:
    return [
        "bench=fidelity",
        f"bench.lengths=[{args.length}]",
        f"bench.samples_per_source={args.samples // 2}",
        f"bench.continuation_tokens={args.m}",
        f"methods=[{','.join(METHODS)}]",
        f"budgets=[{','.join(map(str, args.budgets))}]",
        f"output_root={args.out / 'runs'}",
    ]


def measure_all(args: argparse.Namespace) -> None:
    """Run (or resume) the sweep of every method x budget."""
    from eval.compose import compose_config
    from eval.runner import run

    cfg = compose_config(sweep_overrides(args))
    print(run(cfg).format())


def read_rows(args: argparse.Namespace) -> list[dict]:
    """One row per (sample, method, budget) from the sweep's run folders; the full cache once."""
    from eval.collect import find_runs

    rows = []
    for found in find_runs(args.out / "runs"):
        if found.bench != "fidelity":
            continue
        for record in found.records:
            if record["prompt_tokens"] != args.length:
                continue  # another length's samples in the same folder
            rows.append(
                {
                    "id": record["id"],
                    "task": record["task"],
                    "method": found.method,
                    "budget": args.budgets[0] if found.budget is None else found.budget,
                    **record["fidelity"],
                    "attn_err_per_layer": record["attn_err_per_layer"],
                    "prefill_seconds": record["prefill_seconds"],
                    "reference_seconds": record["reference_seconds"],
                    "decode_seconds": record["decode_seconds"],
                }
            )
    return rows


def fmt(ci: tuple[float, float, float], digits: int = 3) -> str:
    return f"{ci[0]:.{digits}f} [{ci[1]:.{digits}f}, {ci[2]:.{digits}f}]"


def report(rows: list[dict], budgets: list[int]) -> str:
    by = {}
    for r in rows:
        by.setdefault((r["method"], r["budget"]), {})[r["id"]] = r
    full = next(iter(v for (m, _), v in by.items() if m == "full"), {})
    ids = sorted(set.intersection(*(set(v) for v in by.values())))  # samples every configuration finished
    lines = [f"Samples: {len(ids)} ({', '.join(sorted({by[next(iter(by))][i]['task'] for i in ids}))})", ""]
    lines += ["## Mean and 95% bootstrap interval over samples", ""]
    lines += ["| method | budget | " + " | ".join(METRICS) + " |", "|---|---:|" + "---:|" * len(METRICS)]
    for budget in budgets:
        for method in METHODS:
            recs = full if method == "full" else by.get((method, budget), {})
            cells = [fmt(bootstrap_ci([recs[i][k] for i in ids]), 4) for k in METRICS]
            lines.append(f"| {method} | {budget} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Paired difference to snapkv at the same budget (mean [95% interval]; * = interval excludes 0)",
        "",
    ]
    lines += [
        "| method | budget | " + " | ".join(f"d_{k}" for k in METRICS) + " |",
        "|---|---:|" + "---:|" * len(METRICS),
    ]
    for budget in budgets:
        snap = by[("snapkv", budget)]
        for method in METHODS:
            if method == "snapkv":
                continue
            recs = full if method == "full" else by[(method, budget)]
            cells = []
            for k in METRICS:
                ci = paired_bootstrap_ci([recs[i][k] for i in ids], [snap[i][k] for i in ids])
                cells.append(fmt(ci, 4) + (" *" if separated(ci[1], ci[2]) else ""))
            lines.append(f"| {method} | {budget} | " + " | ".join(cells) + " |")
    lines += ["", "## Mean attention-output error per layer (relative L2)", ""]
    curve_methods = ["snapkv", "adakv", "lava", "pyramidkv", "cake"]
    for budget in budgets:
        lines += [
            f"budget {budget}:",
            "",
            "| layer | " + " | ".join(curve_methods) + " |",
            "|---:|" + "---:|" * len(curve_methods),
        ]
        curves = {}
        for method in curve_methods:
            per = [by[(method, budget)][i]["attn_err_per_layer"] for i in ids]
            curves[method] = [sum(c) / len(c) for c in zip(*per)]
        for layer in range(len(curves["snapkv"])):
            lines.append(
                f"| {layer} | " + " | ".join(f"{curves[m][layer]:.4f}" for m in curve_methods) + " |"
            )
        lines.append("")
    # Per sample, the sweep's prefill and reference are shared by every configuration; the compare
    # is each configuration's share of its batch.
    samples = {r["id"]: r for r in rows}.values()
    prefill = sum(r["prefill_seconds"] + r["reference_seconds"] for r in samples)
    compare = sum(r["decode_seconds"] for r in rows)
    lines += [
        f"Wall time: {len(samples)} samples x {len(by)} configurations; per sample, prefill + reference "
        f"{prefill / len(samples):.2f} s (shared) and compare {compare / len(samples):.2f} s (all "
        f"configurations); per sample and configuration {(prefill + compare) / len(rows):.3f} s."
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/fidelity_report"))
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=10, help="total, half essays and half code")
    parser.add_argument("--m", type=int, default=64)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        measure_all(args)
    text = report(read_rows(args), args.budgets)
    (args.out / "fidelity_report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
