"""The compression policy: score each layer, split the budget among layers and heads, say what is kept.

One implementation serves both ways a cache is built:

- online, by :class:`lava.cache.CompressedCache` during a single run's prefill: each layer is scored
  right after its full attention and handed to a :class:`BudgetPlan`, whose caps the cache applies
  (earlier layers only ever shrink);
- offline, by a sweep (:func:`lava.prefill.build_cache_from_capture`): one prefill keeps every layer's keys,
  values and last queries (as many as its scorers read), each scorer runs once per layer
  (:func:`score_layer`, shared by every method with the same scorer), and one :class:`BudgetPlan`
  per (method, budget) replays exactly the same layer-by-layer allocation, so the kept entries are
  identical to the single run's.

Budgets never change scores, only the allocation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lava.method import CompressionMethod


@dataclass
class ScoredLayer:
    """What one scorer says about one layer of one prompt (independent of any budget).

    Attributes
    ----------
    scores : Tensor, shape (Hkv, P), float32
        Importance of each evictable prefix entry (``P = n - window``).
    stat : float or None
        The layer statistic a dynamic layer allocator divides the budget by.
    ranks : Tensor, shape (Hkv, n), int64
        Rank of each prompt position by descending score within its head; ``-1`` for the window.
    """

    scores: torch.Tensor
    stat: float | None
    ranks: torch.Tensor


def queries_read(method: CompressionMethod) -> int | None:
    """How many of the last prompt queries ``method``'s scorer reads (None: every prompt query)."""
    hook = getattr(method.scorer, "queries_needed", None)  # a duck-typed scorer reads the window
    return method.window if hook is None else hook(method.window)


def score_layer(
    method: CompressionMethod,
    query: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    scaling: float,
    evidence: torch.Tensor | None = None,
) -> ScoredLayer:
    """Run ``method``'s scorer on one layer.

    Parameters
    ----------
    query : Tensor, shape (Hq, m, d), or None
        Post-RoPE queries of (at least) the last :func:`queries_read` prompt tokens (all ``n`` when
        that is None); unused (None) with ``evidence``.
    keys, values : Tensor, shape (Hkv, n, d)
        The layer's whole prompt, post-RoPE keys.
    evidence : Tensor, shape (Hkv, n), optional
        The layer's share of the scorer's model pass (:meth:`lava.scorers.Scorer.model_pass`), for a
        scorer that needs one: it is scored from that, not from the queries.
    """
    window = method.window
    if evidence is not None:
        result = method.scorer(None, keys, values, window, scaling, evidence=evidence)
        scores = result.scores.float()
        return ScoredLayer(scores, result.stat, ranks_by_score(scores, window))
    n = keys.shape[1]
    needed = queries_read(method)
    count = n if needed is None else min(needed, n)
    if query.shape[1] < count:  # a capture that kept too few would score silently on the wrong queries
        raise ValueError(f"the scorer reads the last {count} prompt queries; got {query.shape[1]}")
    result = method.scorer(query[:, query.shape[1] - count :], keys, values, window, scaling)
    scores = result.scores.float()
    return ScoredLayer(scores, result.stat, ranks_by_score(scores, window))


def score_by_model_pass(
    method: CompressionMethod,
    model: Any,
    input_ids: torch.Tensor,
    layers: list[tuple[torch.Tensor, torch.Tensor, int | None]],
) -> list[ScoredLayer]:
    """Every global layer scored by a scorer that needs a model pass (KVzip), in layer order.

    One :meth:`~lava.scorers.Scorer.model_pass` over the prefilled ``layers`` (``(keys, values,
    window)`` per decoder layer, as that method takes them), then :func:`score_layer` on each
    global layer (``window`` None) with its share of the pass. Single runs
    (:meth:`lava.cache.CompressedCache.finish_model_pass`) and sweeps (:func:`lava.prefill.score_methods`)
    both come here, so they score the same prefill identically.
    """
    evidence = method.scorer.model_pass(model, input_ids, layers)
    prompts = [(keys, values) for keys, values, window in layers if window is None]
    return [
        score_layer(method, None, keys, values, 1.0, evidence=share)
        for (keys, values), share in zip(prompts, evidence, strict=True)
    ]


def scorer_key(method: CompressionMethod) -> str:
    """Identity of a method's scoring: methods with equal keys get identical :class:`ScoredLayer`s."""
    scorer = method.scorer
    params = asdict(scorer) if is_dataclass(scorer) else repr(scorer)
    return repr((type(scorer).__module__, type(scorer).__qualname__, params, method.window))


def evicts(method: CompressionMethod, prompt_len: int) -> bool:
    """Whether a prompt of ``prompt_len`` tokens exceeds the budget (otherwise everything is kept)."""
    return prompt_len > method.budget


class BudgetPlan:
    """Layer and head allocation of one method over the layers of one prompt, fed layer by layer.

    After each :meth:`add`, :attr:`caps` holds the current per-head cap (entries kept beyond the
    window, shape (Hkv,)) of every allocated layer. With a monotone layer allocator (the default:
    an earlier layer's budget only shrinks as layers arrive) every layer is allocated as soon as it
    is added and earlier caps only go down; a layer allocator with ``monotone = False`` is called
    once, after the last layer, and until then no layer has caps.

    Parameters
    ----------
    method : CompressionMethod
    num_layers : int
    """

    def __init__(self, method: CompressionMethod, num_layers: int) -> None:
        self.method = method
        self.num_layers = num_layers
        self.monotone = bool(getattr(method.layer_allocator, "monotone", True))
        self.layers: list[ScoredLayer] = []
        self.layer_budgets: list[int] = []  # current non-window budget of each allocated layer
        self.caps: list[torch.Tensor | None] = []
        self._prepared: list[Any] = []

    @property
    def complete(self) -> bool:
        return len(self.layers) == self.num_layers

    def add(self, layer: ScoredLayer) -> list[int]:
        """Add the next layer; returns the indices of the layers whose caps were set or lowered."""
        method = self.method
        head = method.head_allocator
        self.layers.append(layer)
        self.caps.append(None)
        self._prepared.append(head.prepare(layer.scores))
        seen = len(self.layers)
        if not self.monotone and not self.complete:
            return []
        budgets = method.layer_allocator.allocate(
            [s.stat for s in self.layers],
            [s.scores.shape[1] for s in self.layers],
            self.num_layers,
            method.budget - method.window,
        )
        changed = []
        for j in range(seen):
            if self.caps[j] is not None and budgets[j] >= self.layer_budgets[j]:
                continue  # earlier layers only shrink
            caps = head.caps(self.layers[j].scores, budgets[j], method.budget, self._prepared[j])
            if self.caps[j] is None:
                self.layer_budgets.append(budgets[j])
                self.caps[j] = caps
            else:
                self.layer_budgets[j] = budgets[j]
                self.caps[j] = torch.minimum(caps, self.caps[j])
            changed.append(j)
        if self.complete:  # scores are only needed while budgets can still move
            self._prepared = [None] * seen
        return changed

    def final_caps(self) -> list[torch.Tensor]:
        """Per-layer caps after the last layer."""
        if not self.complete:
            raise RuntimeError(f"plan has {len(self.layers)} of {self.num_layers} layers")
        return list(self.caps)


def kept_entries(rank: torch.Tensor, caps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(heads, positions) of the entries with ``rank[h, p] < caps[h]``, head-major and sorted by position.

    ``rank`` (Hkv, n) and ``caps`` (Hkv,) must share a device: both come from the layer's scores.
    """
    return (rank < caps[:, None]).nonzero(as_tuple=True)


def keep_all_ranks(num_kv_heads: int, n: int, device: torch.device) -> torch.Tensor:
    """Ranks for a prompt that fits the budget: every position always kept."""
    return torch.full((num_kv_heads, n), -1, dtype=torch.long, device=device)


def ranks_by_score(scores: torch.Tensor, window: int) -> torch.Tensor:
    """(Hkv, P + window) rank of each prompt position by descending score within its head (ties: lower
    position first); -1 for the window, which is always kept."""
    hkv, prefix = scores.shape
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.full((hkv, prefix + window), -1, dtype=torch.long, device=scores.device)
    steps = torch.arange(prefix, device=scores.device).expand(hkv, prefix)
    ranks[:, :prefix].scatter_(1, order, steps)
    return ranks
