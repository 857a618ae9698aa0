"""Fidelity of every method x budget on the same samples, with intervals over samples and paired to SnapKV.

    python scripts/fidelity_report.py --out /tmp/fid_out                 # measure (resumable) + report
    python scripts/fidelity_report.py --out /tmp/fid_out --report-only   # rebuild the tables

Configurations run one by one through the library (:func:`eval.benchmarks.fidelity.measure`: one
prefill per sample and configuration, the full reference taken from the same prefill). Results are
appended to ``<out>/fidelity_raw.jsonl`` as they finish, so a killed run resumes. The report is
``<out>/fidelity_report.md``: mean and 95% bootstrap interval of kl, top1, nll_delta and attn_err per
method and budget, the paired interval of each method's difference to snapkv at the same budget, and
the mean layer-wise attention error of lava, adakv and snapkv.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.methods import display_order, make_method  # noqa: E402
from eval.stats import bootstrap_ci, paired_bootstrap_ci, separated  # noqa: E402

METHODS = display_order()  # every method config (eval.methods), the full cache first
METRICS = ["kl", "top1", "nll_delta", "attn_err"]


def measure_all(args: argparse.Namespace, raw: Path) -> None:
    import torch
    import yaml
    from transformers import DynamicCache

    from eval.benchmarks.base import PromptContext
    from eval.benchmarks.fidelity import Fidelity, measure
    from eval.runner import build_prompt_ids
    from lava.models import as_spec, load_model

    done = set()
    if raw.exists():
        for line in raw.read_text().splitlines():
            r = json.loads(line)
            done.add((r["id"], r["method"], r["budget"]))
    spec = as_spec(yaml.safe_load((REPO / "configs" / "model" / "smollm2-135m.yaml").read_text()))
    model, tok = load_model(spec)
    bench = Fidelity(lengths=[args.length], samples_per_source=args.samples // 2, continuation_tokens=args.m)
    ctx = PromptContext(tokenizer=tok, model_name=spec.name, max_prompt_tokens=spec.max_prompt_tokens)
    samples = list(bench.samples(ctx))
    methods = {
        (n, b): make_method(n, b, spec.name)
        for n in METHODS
        for b in (args.budgets[:1] if n == "full" else args.budgets)
    }
    with open(raw, "a") as out:
        for sample in samples:
            prompt_ids = build_prompt_ids(sample, tok, spec)
            for (name, budget), method in methods.items():
                if (sample.id, name, budget) in done:
                    continue
                cache = (
                    DynamicCache(config=model.config) if method is None else method.make_cache(model, args.m)
                )
                if method is None:
                    model.set_attn_implementation("sdpa")
                t0 = time.perf_counter()
                scores, seconds = measure(model, prompt_ids, sample.meta["continuation_ids"], cache)
                row = {"id": sample.id, "task": sample.task, "method": name, "budget": budget, **scores}
                row.update(seconds, total_seconds=time.perf_counter() - t0, prompt_tokens=len(prompt_ids))
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(
                    f"{sample.id} {name}@{budget}: kl={scores['kl']:.4f} {row['total_seconds']:.1f}s",
                    flush=True,
                )
            del cache
            torch.cuda.empty_cache() if torch.cuda.is_available() else None


def fmt(ci: tuple[float, float, float], digits: int = 3) -> str:
    return f"{ci[0]:.{digits}f} [{ci[1]:.{digits}f}, {ci[2]:.{digits}f}]"


def report(raw: Path, budgets: list[int]) -> str:
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
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
    secs = [r["total_seconds"] for r in rows if r["method"] != "full"]
    lines += [
        f"Wall time per sample and configuration: mean {sum(secs) / len(secs):.2f} s over {len(secs)} "
        f"(prefill {sum(r['prefill_seconds'] for r in rows) / len(rows):.2f}, reference "
        f"{sum(r['reference_seconds'] for r in rows) / len(rows):.2f}, compare "
        f"{sum(r['decode_seconds'] for r in rows) / len(rows):.2f})"
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
    raw = args.out / "fidelity_raw.jsonl"
    if not args.report_only:
        measure_all(args, raw)
    text = report(raw, args.budgets)
    (args.out / "fidelity_report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
