"""Compression methods built from their Hydra configs (``configs/method/<name>.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs" / "method"
# The methods of the speed grid, in the order; the correctness checks run every config.
PERF_METHODS = ["snapkv", "pyramidkv", "adakv", "cake", "lava"]


def compressing_methods() -> list[str]:
    """Every method config except the full cache, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "full")


def make_method(name: str, budget: int, model_name: str) -> Any:
    """``CompressionMethod`` of ``configs/method/<name>.yaml`` with ``budget`` and ``model.name`` set."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    context = OmegaConf.create({"budget": budget, "model": {"name": model_name}})
    context.method = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    return instantiate(context.method, _convert_="all")
