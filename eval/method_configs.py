"""The method registry: the names in ``configs/method/``, and the single-run config of a (method, budget).

A sweep (``methods=[...] budgets=[...]``) is a list of configurations; each one is exactly the
config the single run ``method=<name> budget=<B>`` composes, so both write the same run folder.
The full cache is one configuration whatever the budgets: its config has ``budget: null``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from lava.errors import UserError

METHOD_DIR = Path(__file__).resolve().parents[1] / "configs" / "method"
SWEEP_KEYS = ("methods", "budgets", "compression_ratios")  # null in every single-run config
#: A budget large enough never to bind: what a compression-ratio run's method is built with before
#: each sample sets its own budget (:func:`lava.ratio.at_ratio`).
RATIO_PLACEHOLDER_BUDGET = 1 << 30


def method_names() -> list[str]:
    """Every method config name, sorted."""
    return sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))


def display_order() -> list[str]:
    """Method names in table and plot order: the full cache (the reference) first, then the rest by name."""
    names = method_names()
    return [n for n in names if is_full(method_node(n))] + [n for n in names if not is_full(method_node(n))]


def method_node(name: str) -> DictConfig:
    """The ``configs/method/<name>.yaml`` node (interpolations unresolved)."""
    path = METHOD_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown method {name!r}; choose from {', '.join(method_names())} or all")
    return OmegaConf.load(path)


def is_full(method_cfg: Any) -> bool:
    """The full cache: a method config without ``_target_`` (nothing to build, nothing evicted)."""
    return "_target_" not in method_cfg


def resolve_methods(spec: Any) -> list[str]:
    """``methods=all`` or a list of names -> the names, in the given order, each once."""
    if spec == "all" or (isinstance(spec, (list, ListConfig)) and list(spec) == ["all"]):
        return method_names()
    names = [spec] if isinstance(spec, str) else list(spec) if isinstance(spec, (list, ListConfig)) else None
    if not names:
        raise UserError(
            f"methods={spec} is invalid; give a list of names, e.g. methods=[snapkv,lava], or all"
        )
    known = set(method_names())
    for name in names:
        if name not in known:
            raise UserError(
                f"unknown method {name!r} in methods; choose from {', '.join(sorted(known))} or all"
            )
    return list(dict.fromkeys(names))


def resolve_budgets(spec: Any) -> list[int]:
    budgets = (
        [spec] if isinstance(spec, int) else list(spec) if isinstance(spec, (list, ListConfig)) else None
    )
    if not budgets or any(not isinstance(b, int) or isinstance(b, bool) or b <= 0 for b in budgets):
        raise UserError(f"budgets={spec} is invalid; give positive integers, e.g. budgets=[64,128]")
    return list(dict.fromkeys(budgets))


def resolve_ratios(spec: Any) -> list[float]:
    """The compression ratios of a sweep: fractions in [0, 1), each once."""
    ratios = list(spec) if isinstance(spec, (list, ListConfig)) else None
    if not ratios or any(not _is_fraction(r) for r in ratios):
        raise UserError(f"compression_ratios={spec} is invalid; give fractions in [0, 1), e.g. [0.25,0.5]")
    return list(dict.fromkeys(float(r) for r in ratios))


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0


def configurations(methods: list[str], budgets: list[Any]) -> list[tuple[str, Any]]:
    """(method, budget) pairs of a sweep (budgets, or compression ratios); the full cache once, with None."""
    out: list[tuple[str, Any]] = []
    for name in methods:
        if is_full(method_node(name)):
            out.append((name, None))
        else:
            out.extend((name, b) for b in budgets)
    return out


def single_config(cfg: DictConfig, name: str, budget: int | None, ratio: float | None = None) -> DictConfig:
    """The config ``method=<name> budget=<budget>`` (or ``compression_ratio=<ratio>``) composes, with
    the sweep keys cleared."""
    single = cfg.copy()
    with open_dict(single):
        single.method = method_node(name)
        for key in SWEEP_KEYS:
            single[key] = None
        full = is_full(single.method)
        single.budget = None if full or ratio is not None else budget
        single.compression_ratio = None if full else ratio
    return single


def canonical(cfg: DictConfig) -> DictConfig:
    """A single-run config as its run folder records it: the full cache carries no budget and no
    compression ratio; a compression-ratio run no budget (each sample derives its own)."""
    full, ratio = is_full(cfg.method), cfg.get("compression_ratio")
    if (full or ratio is not None) and cfg.get("budget") is not None or (full and ratio is not None):
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.budget = None
            if full:
                cfg.compression_ratio = None
    return cfg


def build_method(cfg: DictConfig) -> Any:
    """The compression method of a single-run config, or None for the full cache.

    A compression-ratio run's method is built at :data:`RATIO_PLACEHOLDER_BUDGET`; each sample then
    takes the budget its ratio means (:func:`lava.ratio.at_ratio`).
    """
    if is_full(cfg.method):
        return None
    if cfg.get("compression_ratio") is not None:
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.budget = RATIO_PLACEHOLDER_BUDGET
    return build_node(cfg.method, "method")


def build_node(node: DictConfig, group: str) -> Any:
    """Build the object of a config node (method, bench), any constructor failure a one-line UserError."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all")
    except Exception as exc:  # Hydra wraps constructor errors; surface the root cause on one line
        root = exc
        while root.__cause__ is not None:
            root = root.__cause__
        if isinstance(root, UserError):
            raise root from None
        raise UserError(f"bad {group} config ({node.name}): {root}".splitlines()[0]) from None


def build_named_method(name: str, budget: int | None, model_name: str | None = None) -> Any:
    """The compression method ``configs/method/<name>.yaml`` builds at ``budget`` (None for the full cache).

    The one way to build a method outside a Hydra run (perf benchmarks, scripts, tests): the
    method node with ``budget`` and ``model.name`` resolved, then :func:`build_method`.
    """
    cfg = OmegaConf.create({"budget": budget, "model": {"name": model_name}})
    cfg.method = method_node(name)
    return build_method(cfg)


def compressing_methods() -> list[str]:
    """Every method that builds a compressing cache (all but the full cache), sorted."""
    return [name for name in method_names() if not is_full(method_node(name))]
