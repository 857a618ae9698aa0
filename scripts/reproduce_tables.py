"""Regenerate the committed tables and figures in ``results/`` from a sweep profile.

    python scripts/reproduce_tables.py                 # configs/sweep/cpu.yaml, its default benches
    python scripts/reproduce_tables.py --bench niah    # one bench of the profile

Each (bench, method, budget) is an ordinary run folder under ``--output-root`` (resumable: a
killed sweep continues where it stopped); the tables are rebuilt from their ``scores.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import yaml
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.plots import plt  # noqa: E402  (headless backend set there)
from eval.runner import run, run_dir_for  # noqa: E402
from eval.tables import markdown_table  # noqa: E402
from lava.errors import UserError  # noqa: E402


def sweep(profile: dict, benches: list[str], output_root: Path) -> pd.DataFrame:
    rows = []
    for bench in benches:
        for method in profile["methods"]:
            budgets = profile["budgets"] if method != "full" else profile["budgets"][:1]
            for budget in budgets:
                overrides = [
                    *profile["benches"][bench],
                    f"method={method}",
                    f"budget={budget}",
                    f"output_root={output_root}",
                    "progress=true",
                ]
                with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
                    cfg = compose(config_name="config", overrides=overrides)
                summary = run(cfg)
                scores = json.loads((run_dir_for(cfg) / "scores.json").read_text())
                for b in budgets if method == "full" else [budget]:
                    rows.append(
                        {
                            "bench": bench,
                            "method": method,
                            "budget": b,
                            "score": summary.score,
                            "per_task": scores.get("per_task", {}),
                            "run_dir": str(summary.run_dir),
                        }
                    )
    return pd.DataFrame(rows)


def write_tables(df: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for bench, part in df.groupby("bench"):
        table = part.pivot_table(index="method", columns="budget", values="score").round(4)
        table.to_csv(out / f"{bench}.csv")
        (out / f"{bench}.md").write_text(markdown_table(table, digits=4))
        fig, ax = plt.subplots(figsize=(8, 4))
        table.plot.bar(ax=ax)
        ax.set_ylabel("score")
        ax.set_title(f"{bench}: score by method and budget (SmolLM2-135M, CPU)")
        fig.tight_layout()
        fig.savefig(out / f"{bench}.png", dpi=110)
        plt.close(fig)
        written += [out / f"{bench}.csv", out / f"{bench}.md", out / f"{bench}.png"]
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", type=Path, default=REPO / "configs" / "sweep" / "cpu.yaml")
    parser.add_argument("--bench", action="append", help="bench(es) of the profile to run (default: all)")
    parser.add_argument("--output-root", type=Path, default=REPO / "outputs" / "reproduce")
    parser.add_argument("--results", type=Path, default=REPO / "results" / "tables")
    args = parser.parse_args()
    profile = yaml.safe_load(args.profile.read_text())
    benches = args.bench or profile.get("default_benches", list(profile["benches"]))
    unknown = sorted(set(benches) - set(profile["benches"]))
    try:
        if unknown:
            raise UserError(f"unknown bench(es) {unknown}; the profile has {sorted(profile['benches'])}")
        df = sweep(profile, benches, args.output_root)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for path in write_tables(df, args.results):
        print(path)


if __name__ == "__main__":
    main()
