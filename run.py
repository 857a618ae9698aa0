"""Entry point: ``python run.py method=lava bench=niah model=smollm2-135m budget=128``; a sweep:
``python run.py bench=niah methods=all budgets=[64,128,256]`` (docs/sweep.md)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from lava.errors import UserError


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        from hydra.core.hydra_config import HydraConfig

        from eval.checks import check_one_unit
        from eval.runner import run  # inside: an unsupported transformers is a UserError

        given = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
        check_one_unit(given)
        summary = run(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished samples are saved; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    print(summary.format())
    if hasattr(summary, "runs"):  # a sweep: its runs side by side, with intervals
        print_comparison([r.run_dir for r in summary.runs])
    return summary.score


def print_comparison(run_dirs: list) -> None:
    """The sweep's score table (mean and 95% interval per run) and, for NIAH, its grid figure."""
    from eval.score_table import format_score_table, write_niah_figure

    print("\n" + format_score_table(run_dirs))
    figure = write_niah_figure(run_dirs, run_dirs[0].parent / "niah_grid.png")
    if figure is not None:
        print(f"\n  figure: {figure}")


if __name__ == "__main__":
    main()
