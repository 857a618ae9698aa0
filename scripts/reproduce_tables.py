"""Regenerate the committed tables and figures in ``results/`` from a sweep profile.

    python scripts/reproduce_tables.py                 # configs/sweep/cpu.yaml, its default benches
    python scripts/reproduce_tables.py --bench niah    # one bench of the profile
    python scripts/reproduce_tables.py --report-only   # rebuild results/ from the existing run folders

Each (bench, method, budget) is an ordinary run folder under ``--output-root`` (resumable: a
killed sweep continues where it stopped); tables, figures and claims are rebuilt from the run folders (:func:`write_results`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.collect import Run, find_runs, load_run  # noqa: E402
from eval.methods import configurations, resolve_budgets, resolve_methods  # noqa: E402
from eval.results import write_results  # noqa: E402
from eval.runner import run, run_dir_for  # noqa: E402
from lava.errors import UserError  # noqa: E402


def sweep(profile: dict, benches: list[str], output_root: Path) -> list[Run]:
    """Run (or resume) every (bench, method, budget) of the profile; the full cache once per bench."""
    runs = []
    for bench in benches:
        methods = resolve_methods(profile["methods"])  # `methods: all` = every configs/method/*.yaml
        for method, budget in configurations(methods, resolve_budgets(profile["budgets"])):
            overrides = [
                *profile["benches"][bench],
                f"method={method}",
                f"budget={'null' if budget is None else budget}",  # the full cache: one budget-less run
                f"output_root={output_root}",
                "progress=true",
            ]
            with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
                cfg = compose(config_name="config", overrides=overrides)
            run(cfg)
            runs.append(load_run(run_dir_for(cfg)))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", type=Path, default=REPO / "configs" / "sweep" / "cpu.yaml")
    parser.add_argument("--bench", action="append", help="bench(es) of the profile to run (default: all)")
    parser.add_argument("--output-root", type=Path, default=REPO / "outputs" / "reproduce")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="tables/, figures/, claims.md")
    parser.add_argument(
        "--perf", type=Path, default=REPO / "results" / "perf" / "perf.csv", help="make bench-perf's CSV"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild results/ from every run folder under --output-root",
    )
    args = parser.parse_args()
    profile = yaml.safe_load(args.profile.read_text())
    benches = args.bench or profile.get("default_benches", list(profile["benches"]))
    unknown = sorted(set(benches) - set(profile["benches"]))
    try:
        if unknown:
            raise UserError(f"unknown bench(es) {unknown}; the profile has {sorted(profile['benches'])}")
        runs = find_runs(args.output_root) if args.report_only else sweep(profile, benches, args.output_root)
        if not runs:
            raise UserError(
                f"no finished run folders under {args.output_root}; run without --report-only first"
            )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for path in write_results(runs, args.results, args.profile.stem, args.perf):
        print(path)


if __name__ == "__main__":
    main()
