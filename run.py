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
        from eval.runner import format_summary, run  # inside: an unsupported transformers is a UserError

        summary = run(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished samples are saved; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    print(format_summary(summary))
    return summary.score


if __name__ == "__main__":
    main()
