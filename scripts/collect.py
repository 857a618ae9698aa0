"""Gather every run folder under an output root into one tidy CSV (one row per run x task x metric).

    python scripts/collect.py                                  # outputs/ -> results/runs.csv
    python scripts/collect.py --output-root /scratch/lava --out all_runs.csv

Columns: model, bench, method, budget (empty for the full cache), run (folder name), task (``all``
for the run's overall numbers), metric, value, num_samples, headline, lower_is_better.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.collect import find_runs, write_tidy_csv  # noqa: E402
from lava.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-root", type=Path, default=REPO / "outputs", help="where run folders live")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "runs.csv", help="the tidy CSV")
    args = parser.parse_args(argv)
    try:
        if not args.output_root.is_dir():
            raise UserError(
                f"--output-root {args.output_root} is not a directory; pass the output_root of your runs"
            )
        runs = find_runs(args.output_root)
        if not runs:
            raise UserError(
                f"no run folders (with scores.json) under {args.output_root}; run something first"
            )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = write_tidy_csv(runs, args.out)
    print(f"{path}: {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
