"""Budget allocators: how a total budget is split among layers, then among the KV heads of a layer.

Budgets here count *non-window* entries per KV head (``B0 - window`` on average): the window is
always kept on top. Every allocator keeps ``sum(budgets) <= num_layers * (B0 - window)`` and, per
layer, ``sum(head caps) <= num_kv_heads * layer_budget``, so a method never stores more than
``layers x kv_heads x B0`` entries. The parity switches are the exceptions: LAVa's upstream floor
(``FlatHeadBudget(floor="upstream")``) and PyramidKV's upstream schedule
(``PyramidLayerBudget(schedule="upstream")``) keep a few more, as the upstream code does.
docs/methods.md gives every rule with its defaults and the entry counts they give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

# ----------------------------------------------------------------------------------------------------------
# Layer allocators: allocate(stats, caps, num_layers, per_layer) -> budgets of the layers seen so far.
#   stats     : the layer statistic of each seen layer (None for scorers without one)
#   caps      : evictable prefix length P of each seen layer (a layer never needs more than P)
#   per_layer : the average non-window budget per head, B0 - window
# Called after each layer's prefill with the layers seen so far. A ``monotone`` allocator promises that
# the budgets of earlier layers only shrink as more layers arrive, so the cache can compress every layer
# at once and shrink it later (bounded peak memory). A non-monotone one makes the cache keep every
# layer's full prefill until the last layer and allocate once.
# ----------------------------------------------------------------------------------------------------------


class LayerAllocator:
    monotone: bool = True

    def allocate(
        self, stats: Sequence[float | None], caps: Sequence[int], num_layers: int, per_layer: int
    ) -> list[int]:
        raise NotImplementedError


@dataclass
class UniformLayerBudget(LayerAllocator):
    """Every layer gets ``B0 - window`` (SnapKV, Ada-KV, StreamingLLM)."""

    def allocate(self, stats, caps, num_layers, per_layer) -> list[int]:
        return [min(per_layer, cap) for cap in caps]


PYRAMID_SCHEDULES = ("floor", "upstream")


@dataclass
class PyramidLayerBudget(LayerAllocator):
    """PyramidKV's linear schedule from ``max`` at layer 0 down to ``min`` at the last layer.

    ``min = b // beta`` and ``max = 2b - min`` with ``b = B0 - window``; when ``max`` reaches the prefix
    ``P``, ``max = P`` and ``min = 2b - max``.

    Parameters
    ----------
    beta : float
        Ratio of the average budget to the last layer's (20).
    schedule : {"floor", "upstream"}
        ``"floor"`` (default): layer ``l`` gets ``min + floor((L-1-l) (max - min) / (L-1))``, so the total
        never exceeds ``L * b``. ``"upstream"``: KVCache-Factory's integer step, layer ``l`` gets
        ``max - l * ((max - min) // (L-1))``, which keeps a few more entries in the deeper layers
        (the total can exceed ``L * b``), and prompts shorter than ``2b`` tokens get the uniform ``b``.
    window : int or None
        The method's window; only ``schedule="upstream"`` needs it (its short-prompt rule counts the
        whole prompt ``P + window``). The method configs fill it in.
    """

    beta: float = 20.0
    schedule: str = "floor"
    window: int | None = None

    def __post_init__(self) -> None:
        if self.schedule not in PYRAMID_SCHEDULES:
            raise ValueError(f"schedule must be one of {PYRAMID_SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "upstream" and self.window is None:
            raise ValueError("schedule='upstream' needs the method's window (layer_allocator.window)")

    def allocate(self, stats, caps, num_layers, per_layer) -> list[int]:
        if num_layers == 1:
            return [min(per_layer, cap) for cap in caps]
        prefix = max(caps) if caps else 0
        low = int(per_layer // self.beta)
        high = 2 * per_layer - low
        if high >= prefix:
            high = prefix
            low = max(0, 2 * per_layer - high)
        if self.schedule == "upstream":
            if prefix + self.window < 2 * per_layer:  # upstream keeps SnapKV's uniform budget here
                return [min(per_layer, cap) for cap in caps]
            step = (high - low) // (num_layers - 1)
            return [max(0, min(high - layer * step, cap)) for layer, cap in enumerate(caps)]
        span = num_layers - 1
        out = []
        for layer, cap in enumerate(caps):
            budget = low + math.floor((num_layers - 1 - layer) * (high - low) / span)
            out.append(max(0, min(budget, cap)))
        return out


def _weights(stats: Sequence[float | None]) -> list[float]:
    """Non-negative finite weights from layer statistics (missing, negative or non-finite count 0);
    all 1 when every weight is 0 (a degenerate statistic falls back to a uniform split)."""
    values = [max(float(s), 0.0) if s is not None and math.isfinite(s) else 0.0 for s in stats]
    return values if sum(values) > 0 else [1.0] * len(values)


@dataclass
class ProportionalLayerBudget(LayerAllocator):
    """Budgets proportional to a layer statistic, capped at each layer's prefix, surplus redistributed.

    Water-filling: find ``lam`` with ``sum_l min(P_l, lam * s_l) = L * b`` and give layer ``l``
    ``min(P_l, floor(lam * s_l))``. With no layer at its cap this is LAVa's
    ``int(s_l / sum(s) * L * b)``; capped layers give their surplus to the others in proportion to
    their statistic. Called on the layers seen so far with the *whole* total, ``lam`` only falls as
    layers arrive, so earlier layers only shrink (LAVa's online scheme).
    """

    def allocate(self, stats, caps, num_layers, per_layer) -> list[int]:
        total = num_layers * per_layer
        if sum(caps) <= total:
            return list(caps)
        # exact arithmetic: a whole-number share must not floor to n - 1
        exact = [Fraction(v) for v in _weights(stats)]
        lam = _water_level(exact, caps, total)
        if lam is None:  # every layer with a positive statistic is capped
            return [cap if v > 0 else 0 for v, cap in zip(exact, caps)]
        return [min(cap, math.floor(lam * v)) if v > 0 else 0 for v, cap in zip(exact, caps)]


def _water_level(values: Sequence[Fraction], caps: Sequence[int], total: int) -> Fraction | None:
    """The ``lam`` with ``sum(min(cap, lam * v)) == total``; None when all positive layers are capped."""
    order = sorted((Fraction(cap) / v, v, cap) for v, cap in zip(values, caps) if v > 0)
    remaining_total, remaining_weight = Fraction(total), sum(values, Fraction(0))
    for threshold, v, cap in order:
        lam = remaining_total / remaining_weight
        if lam < threshold:
            return lam
        remaining_total -= cap  # this layer is capped
        remaining_weight -= v
    return None


def _spread(budgets: list[int], amount: int, receivers: list[int]) -> None:
    """Add ``amount`` evenly to ``budgets[receivers]``, the remainder one each to the first receivers."""
    if not receivers:
        return
    each, remainder = divmod(amount, len(receivers))
    for rank, index in enumerate(receivers):
        budgets[index] += each + (1 if rank < remainder else 0)


def even_adjusted_budgets(shares: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Official CAKE's ``adjust_budgets``: integer layer budgets from real-valued shares.

    1. Truncate each share to an integer.
    2. Clamp each layer to its prefix ``P_l``; the clamped surplus is spread evenly over the layers
       below their prefix (the remainder one entry each, lowest layer indices first).
    3. The rounding deficit ``total - sum`` is spread the same way over the layers still below their
       prefix, so the budgets add up to exactly ``total`` unless every layer is at its prefix.

    The surplus spread is not clamped again, as upstream; a layer pushed past its prefix keeps only
    its prefix (upstream's eviction clamps it the same way), which can leave the total a little short.
    """
    budgets = [int(share) for share in shares]
    surplus = sum(max(budget - cap, 0) for budget, cap in zip(budgets, caps))
    budgets = [min(budget, cap) for budget, cap in zip(budgets, caps)]
    if surplus > 0:
        _spread(budgets, surplus, [i for i, (bud, cap) in enumerate(zip(budgets, caps)) if bud < cap])
    deficit = total - sum(budgets)  # >= 0: truncated shares never add up to more than the total
    if deficit > 0:
        _spread(budgets, deficit, [i for i, (bud, cap) in enumerate(zip(budgets, caps)) if bud < cap])
    return [min(budget, cap) for budget, cap in zip(budgets, caps)]


REDISTRIBUTIONS = ("even", "proportional")


@dataclass
class PreferenceLayerBudget(LayerAllocator):
    """CAKE: budgets in proportion to each layer's preference ``H^(1/tau1) * V^(1/tau2)``.

    Parameters
    ----------
    redistribute : {"even", "proportional"}
        ``"even"`` (default, official CAKE): shares ``s_l / sum(s) * L * b`` adjusted by
        :func:`even_adjusted_budgets` (clamped surplus and rounding deficit spread evenly; the total is
        exactly ``L * b``). Not monotone: a later layer at its prefix can raise an earlier layer's
        budget, so the cache allocates once after the last layer, as official CAKE does.
        ``"proportional"``: water-filling as :class:`ProportionalLayerBudget` (surplus in proportion to
        the preference; online, earlier layers only shrink).
    cascading : bool
        Official CAKE's ``use_cascading`` (``redistribute="even"`` only). After each layer's prefill
        the same even rule is applied to the layers seen so far, the preferences normalised over those
        layers and the *whole* model's ``L * b`` shared among them, and every seen layer is evicted
        down to its new budget. Upstream evicts (top-k of the layer's scores, never more than it still
        holds), so an earlier layer never grows back even when the rule gives it more later (through
        the rounding deficit or a later layer's clamped surplus); :class:`lava.policy.BudgetPlan` keeps
        the same minimum. Memory stays bounded (at most ``L * b`` non-window entries per head over
        all layers, the windows, and one layer's full prompt) instead of every layer's prompt until
        the last layer; the kept total can end below ``L * b``. Default False: the official one-shot
        allocation.
    """

    redistribute: str = "even"
    cascading: bool = False

    def __post_init__(self) -> None:
        if self.redistribute not in REDISTRIBUTIONS:
            raise ValueError(f"redistribute must be one of {REDISTRIBUTIONS}, got {self.redistribute!r}")
        if not isinstance(self.cascading, bool):
            raise ValueError(f"cascading must be true or false, got {self.cascading!r}")
        if self.cascading and self.redistribute != "even":
            raise ValueError(
                "cascading=true needs redistribute=even (proportional is already allocated layer by layer)"
            )

    @property
    def monotone(self) -> bool:
        # Cascading is monotone by construction: the plan only ever lowers an earlier layer's budget.
        return self.redistribute == "proportional" or self.cascading

    def allocate(self, stats, caps, num_layers, per_layer) -> list[int]:
        """Budgets of the layers in ``stats``: all layers (one-shot) or, cascading, the layers seen so far.

        The same rule serves both: the preferences are normalised over the given layers and the whole
        model's ``num_layers * per_layer`` is shared among them, as upstream does at every step.
        """
        if self.redistribute == "proportional":
            return ProportionalLayerBudget.allocate(self, stats, caps, num_layers, per_layer)
        total = num_layers * per_layer
        weights = _weights(stats)  # all zero: a uniform split (upstream would divide by zero)
        weight_sum = sum(weights)
        return even_adjusted_budgets([w / weight_sum * total for w in weights], caps, total)


class EntropyLayerBudget(ProportionalLayerBudget):
    """LAVa: budgets proportional to the normalised entropy of each layer's scores."""


# ----------------------------------------------------------------------------------------------------------
# Head allocators: caps(scores, budget, base_budget) -> entries kept per KV head (window excluded).
# Each head keeps its top-``cap`` entries by score.
# ----------------------------------------------------------------------------------------------------------


class HeadAllocator:
    def prepare(self, scores: torch.Tensor) -> Any:
        """Work that depends on the scores only, reused by every later ``caps`` call on the same layer
        (the online allocation recomputes a layer's caps each time its budget shrinks)."""
        return None

    def caps(self, scores: torch.Tensor, budget: int, base_budget: int, prepared: Any = None) -> torch.Tensor:
        """Per-head caps, shape (Hkv,), int64. ``base_budget`` is the config's B0 (window included);
        ``prepared`` is what :meth:`prepare` returned for these scores, or None."""
        raise NotImplementedError


@dataclass
class UniformHeadBudget(HeadAllocator):
    """Every head of the layer keeps ``budget`` entries."""

    def caps(self, scores, budget, base_budget, prepared=None) -> torch.Tensor:
        hkv, prefix = scores.shape
        return torch.full((hkv,), min(budget, prefix), dtype=torch.long, device=scores.device)


@dataclass
class FlatHeadBudget(HeadAllocator):
    """Ada-KV's flat top-k across the heads of a layer, with a uniform floor.

    Counts ``c`` = how many of each head's entries fall in the layer's top ``Hkv * budget`` scores;
    ``cap = round(c * (1 - alpha) + F)``. ``floor="exact"`` uses ``F = int(alpha * budget)`` and trims
    rounding overshoot so that ``sum(cap) <= Hkv * budget``; ``floor="upstream"`` uses LAVa's stale
    ``F = int(alpha * B0)`` (window included, same in every layer) and keeps its extra entries
    (docs/methods.md, LAVa).
    """

    alpha: float = 0.2
    floor: str = "exact"

    def __post_init__(self) -> None:
        if self.floor not in ("exact", "upstream"):
            raise ValueError(f"floor must be 'exact' or 'upstream', got {self.floor!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")

    def prepare(self, scores: torch.Tensor) -> torch.Tensor:
        """Stable descending order of the layer's flattened scores: ties resolve to the lower index,
        so smaller budgets select nested sets."""
        return torch.sort(scores.reshape(-1).float(), descending=True, stable=True).indices

    def caps(self, scores, budget, base_budget, prepared=None) -> torch.Tensor:
        hkv, prefix = scores.shape
        if budget >= prefix:
            return torch.full((hkv,), prefix, dtype=torch.long, device=scores.device)
        order = (prepared if prepared is not None else self.prepare(scores))[: hkv * budget]
        heads = order // prefix
        # A scatter, not bincount: bincount's output size is read on the host (a sync on CUDA).
        counts = torch.zeros(hkv, dtype=torch.float64, device=scores.device).index_add_(
            0, heads, torch.ones_like(heads, dtype=torch.float64)
        )
        floor = int(self.alpha * (budget if self.floor == "exact" else base_budget))
        raw = counts * (1.0 - self.alpha) + floor
        caps = torch.round(raw).long()  # round half to even, like torch.round upstream
        if self.floor == "exact":
            # Trim the overshoot one entry each from the heads that rounded up the most. Computed on the
            # scores' device (no host read of the sum): each head rounds up by at most 1/2, so the
            # overshoot is below Hkv and at most one entry comes off a head.
            excess = caps.sum() - hkv * budget  # 0-dim; <= 0 trims nothing
            order = torch.argsort(caps.double() - raw, descending=True, stable=True)
            place = torch.argsort(order)  # each head's place in that order
            caps = caps - (place < excess).long()
        return caps.clamp(0, prefix)
