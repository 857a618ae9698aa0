"""The suite's Hydra config composed in-process, as ``run.py`` would compose it from the same overrides."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def compose_config(overrides: list[str]) -> DictConfig:
    """``configs/config.yaml`` with Hydra ``overrides`` (e.g. ``["bench=niah", "method=lava"]``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)
