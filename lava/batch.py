"""Several compressed caches decoded as one batch: row ``b`` of every forward is configuration ``b``.

Every configuration of a sweep shares the prompt, so they sit at the same position at every step;
each keeps its own per-head variable-length storage (:class:`~lava.cache.CompressedLayer`). The
model runs one batched forward per step; attention runs per row over that row's packed cache
(the CPU path or the CUDA flash path of :meth:`CompressedLayer.attend_stored`). A row that has
finished leaves the batch with :meth:`BatchedCache.select`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from lava.cache import CompressedCache, CompressedLayer


class BatchedLayer(CacheLayerMixin):
    """One layer of a :class:`BatchedCache`: the same layer of each member cache."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, members: list[CompressedLayer]) -> None:
        super().__init__()
        self.members = members
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        """Append step(s) ``key_states``/``value_states`` (B, Hkv, q, d), row ``b`` to member ``b``."""
        if key_states.shape[0] != len(self.members):
            raise ValueError(f"batch of {key_states.shape[0]} rows for {len(self.members)} caches")
        for member, keys, values in zip(self.members, key_states, value_states):
            member._append(keys, values)
            member.seq_len += key_states.shape[2]
        key_states._lava_layer = self
        return key_states, value_states

    def attend(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """(B, Hq, q, d) queries -> (B, q, Hq, d) attention outputs."""
        outs = [member.attend_stored(q, scaling) for member, q in zip(self.members, query)]
        return torch.stack(outs).transpose(1, 2)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.members[0].seq_len

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        raise RuntimeError("a BatchedCache cannot be reset; build a new one")


class BatchedCache(Cache):
    """A batch of :class:`CompressedCache` objects of one prompt, all at the same position.

    Parameters
    ----------
    caches : list of CompressedCache
        Built for the same prompt (same length, same number of layers).
    """

    def __init__(self, caches: list[CompressedCache]) -> None:
        lengths = {c.get_seq_length() for c in caches}
        if len(lengths) != 1:
            raise ValueError(f"caches of a batch must be at the same position, got lengths {sorted(lengths)}")
        super().__init__(layers=[])
        self.caches = list(caches)
        self.layers.extend(BatchedLayer([c.layers[i] for c in caches]) for i in range(caches[0].num_layers))

    def select(self, rows: list[int]) -> None:
        """Keep only the batch rows ``rows`` (in that order)."""
        self.caches = [self.caches[r] for r in rows]
        for layer in self.layers:
            layer.members = [layer.members[r] for r in rows]
