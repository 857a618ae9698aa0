"""Per-head padded KV storage: the CUDA decode layout of one layer of one or several caches.

``keys``/``values`` of shape (B, Hkv, W + C, d): cache ``b``'s KV head ``h`` keeps its prompt entries
in ``[0, len_bh)``, zeros up to ``W`` (the longest head), then decode step ``t`` at ``W + t``; ``C`` is
the room for decode steps. ``bias`` (B, Hkv, W + C), in the entries' dtype, is 0 on stored rows and
-inf on padding and on the room not yet written.

A decode step is therefore three in-place writes (key, value, the step's mask column) through views
made once, and one SDPA call over the whole buffer (:func:`lava.attention.padded_attention`): no
tensor is created, sliced or moved per step. On a GPU, eager decoding is bound by the host's time per
operation (a Llama layer issues ~40), so the operations per step count more than the kernel's time
over the few masked rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lava.attention import causal_tail_bias, padded_attention, padded_bias


class PaddedStore:
    """Padded keys and values of ``B`` caches of one layer, with an in-place decode tail.

    Parameters
    ----------
    keys, values : Tensor, shape (B, Hkv, W + C, d)
        Prompt rows in place, padding zero (finite: 0 * nan = nan), decode rows ``[W, W + steps)``
        written; the rest of the room zero.
    lens : Tensor, shape (B, Hkv), int64
        Prompt rows of each head, on the entries' device.
    width : int
        ``W``, where the decode steps start.
    steps : int
        Decode steps already stored.
    """

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, lens: torch.Tensor, width: int, steps: int = 0
    ):
        self.keys, self.values, self.lens = keys, values, lens
        self.width, self.tail_len = width, steps
        self._make_views()

    @property
    def capacity(self) -> int:
        """Decode steps the buffers have room for."""
        return self.keys.shape[2] - self.width

    def _make_views(self) -> None:
        """The mask (once per buffer); the per-step views follow at the first decode step."""
        self.bias = padded_bias(self.lens, self.keys.shape[2], self.width, self.tail_len, self.keys.dtype)
        # The decode call sees one sequence of B * Hkv heads: the shapes of a single cache, whose SDPA
        # backend was measured (a batch dimension > 1 with a mask may take another backend).
        batch, hkv, width_all, d = self.keys.shape
        self._keys1 = self.keys.view(1, batch * hkv, width_all, d)
        self._values1 = self.values.view(1, batch * hkv, width_all, d)
        self._bias1 = self.bias.view(1, batch * hkv, 1, width_all)  # one mask row for the g query heads
        self._key_cols: list[torch.Tensor] | None = None

    def _make_step_views(self) -> None:
        """Views of every decode step's key, value and mask column (once per buffer, not per step; not
        for a store that never decodes itself, e.g. a sweep's cache copied into a batch)."""
        steps = range(self.width, self.keys.shape[2])
        self._key_cols = [self.keys[:, :, c : c + 1] for c in steps]  # (B, Hkv, 1, d) each
        self._value_cols = [self.values[:, :, c : c + 1] for c in steps]
        self._bias_cols = [self.bias[:, :, c] for c in steps]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> bool:
        """Store ``q`` decode steps, ``keys``/``values`` of shape (B, Hkv, q, d); True if the buffers grew."""
        q = keys.shape[2]
        grew = self.tail_len + q > self.capacity
        if grew:
            self.grow(max(2 * self.capacity, self.tail_len + q))
        if q == 1:  # the decode step: three writes through ready views
            if self._key_cols is None:
                self._make_step_views()
            self._key_cols[self.tail_len].copy_(keys)
            self._value_cols[self.tail_len].copy_(values)
            self._bias_cols[self.tail_len].zero_()
        else:
            start = self.width + self.tail_len
            self.keys[:, :, start : start + q].copy_(keys)
            self.values[:, :, start : start + q].copy_(values)
            self.bias[:, :, start : start + q] = 0
        self.tail_len += q
        return grew

    def attend(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention of new queries over the stored rows: (B, Hq, q, d) -> (B, q, Hq, d).

        The fast path returns a contiguous tensor (``reshape`` of SDPA's output, which is not
        contiguous for every backend: fp32 runs the efficient kernel's layout).

        The new steps must already be appended (causal among themselves)."""
        batch, hq, q, d = query.shape
        hkv = self.keys.shape[1]
        if q == 1 and query.dtype == self.bias.dtype:  # the decode step: one SDPA over the whole buffer
            grouped = query.reshape(1, batch * hkv, hq // hkv, d)
            out = F.scaled_dot_product_attention(
                grouped, self._keys1, self._values1, attn_mask=self._bias1, scale=scaling
            )
            return out.reshape(batch, 1, hq, d)
        cols = self.width + self.tail_len
        bias = causal_tail_bias(self.bias[:, :, : self.width].to(query.dtype), hq // hkv, q, self.tail_len)
        keys, values = self.keys[:, :, :cols], self.values[:, :, :cols]
        return padded_attention(query, keys, values, bias, scaling).transpose(1, 2)

    def grow(self, capacity: int) -> None:
        """Room for ``capacity`` decode steps (the stored rows copied once)."""
        used = self.width + self.tail_len
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:2], self.width + capacity, old.shape[3]))
            new[:, :, :used] = old[:, :, :used]
            setattr(self, name, new)
        self._make_views()

    def crop(self, steps: int) -> None:
        """Keep only the first ``steps`` decode steps."""
        start = self.width + steps
        self.bias[:, :, start : self.width + self.tail_len] = float("-inf")
        self.tail_len = steps

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the caches ``rows`` (B',) in that order."""
        self.keys, self.values, self.lens = self.keys[rows], self.values[rows], self.lens[rows]
        self._make_views()


def width_groups(widths: Sequence[int], slack: float) -> list[list[int]]:
    """The fewest groups of caches (indices into ``widths``) such that padding each group to its widest
    cache costs at most ``1 + slack`` times the unpadded rows: cuts into the width-sorted caches,
    each new cut the one that saves the most padding.

    Every group is a separate attention call per layer and step, so fewer groups are faster; the
    bound keeps a wide cache (a budget of 2048 beside 128, or a layer given most of the budget)
    from making every other cache as wide.
    """
    order = sorted(range(len(widths)), key=widths.__getitem__)
    sorted_widths = [widths[i] for i in order]
    limit = (1 + slack) * sum(sorted_widths)

    def padded(cuts: list[int]) -> int:
        return sum((end - start) * sorted_widths[end - 1] for start, end in zip(cuts, cuts[1:]))

    cuts = [0, len(order)]
    while padded(cuts) > limit:
        candidates = [c for c in range(1, len(order)) if c not in cuts]
        cuts = min((sorted([*cuts, c]) for c in candidates), key=padded)
    return [order[start:end] for start, end in zip(cuts, cuts[1:])]


class PaddedGroups:
    """The caches of one batch layer in groups of similar width, one :class:`PaddedStore` each.

    Padding a whole batch to its widest cache in a layer costs that width for every cache: a sweep
    mixes budgets (2048 next to 128 entries per head) and dynamic layer budgets (CAKE can give one
    layer most of the model's budget), so one wide cache would make every cache of the batch that
    wide, in memory and in attention reads. :func:`width_groups` makes the fewest groups within a
    padding bound; a decode step costs a few more operations per group (the rows of the group
    selected, its attention, the outputs put back in batch order), a single group none.

    Parameters
    ----------
    stores : list of PaddedStore
    rows : list of list of int
        The batch rows of each store, in the store's order.
    """

    def __init__(self, stores: list[PaddedStore], rows: list[list[int]]):
        self.stores, self.rows = stores, rows
        self._index_rows()

    def _index_rows(self) -> None:
        device = self.stores[0].keys.device
        self._index = [torch.tensor(r, device=device) for r in self.rows]
        order = [row for rows in self.rows for row in rows]
        self._inverse = torch.tensor(sorted(range(len(order)), key=order.__getitem__), device=device)

    @property
    def tail_len(self) -> int:
        return self.stores[0].tail_len

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``q`` decode steps of every cache, ``keys``/``values`` of shape (B, Hkv, q, d)."""
        if len(self.stores) == 1:
            self.stores[0].append(keys, values)
            return
        for store, index in zip(self.stores, self._index):
            store.append(keys.index_select(0, index), values.index_select(0, index))

    def attend(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """(B, Hq, q, d) queries -> (B, q, Hq, d) attention outputs, in batch order."""
        if len(self.stores) == 1:
            return self.stores[0].attend(query, scaling)
        outs = [
            store.attend(query.index_select(0, index), scaling)
            for store, index in zip(self.stores, self._index)
        ]
        return torch.cat(outs).index_select(0, self._inverse)

    def select(self, rows: list[int]) -> None:
        """Keep only the batch rows ``rows``, in that order (row ``rows[i]`` becomes row ``i``)."""
        new_row = {old: new for new, old in enumerate(rows)}
        stores, groups = [], []
        for store, members in zip(self.stores, self.rows):
            kept = [(i, new_row[old]) for i, old in enumerate(members) if old in new_row]
            if not kept:
                continue
            kept.sort(key=lambda pair: pair[1])
            store.select(torch.tensor([i for i, _ in kept], device=store.keys.device))
            stores.append(store)
            groups.append([new for _, new in kept])
        self.stores, self.rows = stores, groups
        self._index_rows()
