"""Several compressed caches decoded as one batch: row ``b`` of every forward is configuration ``b``.

Every configuration of a sweep shares the prompt, so they sit at the same position at every step;
each has its own per-head variable-length storage (:class:`~lava.cache.CompressedLayer`). The model
runs one batched forward per step. On the CPU / PyTorch path a :class:`BatchedLayer` copies its
members' stored rows once into one ``(B, rows, d)`` buffer, each member's rows padded to the longest
member's, followed by room for the decode steps at the same offset in every row; one step is then
three kernels for the whole batch (:func:`lava.attention.batched_packed_attention`) instead of
three per member. On CUDA without flash-attn the batch is padded per KV head instead, ``(B, Hkv, W +
T, d)`` with every member's heads padded to the longest head of the layer, and a step is one SDPA
call (:func:`lava.attention.padded_attention`). With flash-attn on CUDA, attention runs per member
(:meth:`CompressedLayer.attend_stored`).
A row that has finished leaves the batch with :meth:`BatchedCache.select`. A forward of several new
tokens per row (teacher forcing, a sweep's question prefill) appends to the members and attends
through :func:`lava.varlen.varlen_attention`, one block per (member, KV head).

A hybrid model's sliding-window layers (:class:`~lava.cache.SlidingLayer`, never compressed) are
batched as transformers batches them: one rolling window of ``B`` rows (:func:`batched_sliding`),
attended by SDPA under the model's sliding mask. The members' own windows do not move with it;
:meth:`BatchedCache.write_back_windows` hands each member its row when the members go on alone.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache

from lava.attention import (
    FLASH_VARLEN,
    PAD_SLACK,
    SDPA_PADDED,
    batched_packed_attention,
    decode_kernel,
    logits_dtype,
)
from lava.cache import CompressedCache, CompressedLayer, SlidingLayer, UnboundedLayer
from lava.padded import PaddedGroups, PaddedStore, width_groups
from lava.varlen import varlen_attention


class BatchedLayer(UnboundedLayer):
    """One layer of a :class:`BatchedCache`: the same layer of each member cache.

    Packed mode (one-token steps with the masked-matmul kernel): ``keys``/``values`` of shape
    (B, R, d) hold row ``b``'s stored entries in ``[0, used_b)``, zeros up to ``prefix``, then decode
    step ``t`` of KV head ``h`` at ``prefix + t * Hkv + h``; ``bias`` (B, Hq, R) is 0 where query head
    ``h`` may see a row and -inf elsewhere (other KV heads, padding).

    Padded mode (one-token steps with the SDPA kernel, CUDA): ``keys``/``values`` of shape
    (B, Hkv, W + T, d), member ``b``'s head ``h`` in ``[0, len_bh)``, zeros up to ``W`` (the longest
    head of the layer over the batch), decode step ``t`` at ``W + t``; ``bias`` (B, Hkv, W + T).

    Members are not appended to in either mode; with ``take_storage`` their buffers are released
    once copied (their reports still work: they keep their kept-entry counts).
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, members: list[CompressedLayer], take_storage: bool = False) -> None:
        super().__init__()
        self.members = members
        self.take_storage = take_storage
        self.padded_store: PaddedGroups | None = None  # padded mode
        self.is_initialized = True
        self.seq_len = members[0].seq_len
        self.keys: torch.Tensor | None = None  # (B, R, d) in packed mode
        self.values: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None  # (B, Hq, R)
        self.prefix = 0
        self.tail_len = 0
        self.tail_capacity = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    @property
    def packed(self) -> bool:
        """Whether the batch holds the rows in its own buffers (packed or padded mode)."""
        return self.keys is not None or self.padded_store is not None

    @property
    def padded(self) -> bool:
        return self.padded_store is not None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        """Append step(s) ``key_states``/``value_states`` (B, Hkv, q, d), row ``b`` to member ``b``."""
        if key_states.shape[0] != len(self.members):
            raise ValueError(f"batch of {key_states.shape[0]} rows for {len(self.members)} caches")
        q = key_states.shape[2]
        if not self.packed and q == 1:
            kernel = decode_kernel(key_states.device)
            if kernel == SDPA_PADDED:
                self._pack_padded()
            elif kernel != FLASH_VARLEN:
                self._pack()
        if self.padded:
            self.padded_store.append(key_states, value_states)
        elif self.packed:
            if q != 1:
                raise ValueError("a packed batch decodes one token per step")
            self._append(key_states[:, :, 0], value_states[:, :, 0])
        else:
            for member, keys, values in zip(self.members, key_states, value_states):
                member._append(keys, values)
                member.seq_len += q
        self.seq_len += q
        key_states._lava_layer = self
        return key_states, value_states

    def attend(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """(B, Hq, q, d) queries -> (B, q, Hq, d) attention outputs."""
        if self.padded:
            return self.padded_store.attend(query, scaling)
        if self.packed:
            hq = query.shape[1]
            if self.bias is None or self.bias.shape[1] != hq:
                self._build_bias(hq, logits_dtype(query.dtype))
            used = self.prefix + self.members[0].num_kv_heads * self.tail_len
            out = batched_packed_attention(
                query[:, :, 0], self.keys[:, :used], self.values[:, :used], self.bias[:, :, :used], scaling
            )
            return out.unsqueeze(1)
        if query.shape[2] > 1 and len({member.tail_len for member in self.members}) == 1:
            return self._attend_varlen(query, scaling)
        outs = [member.attend_stored(q, scaling) for member, q in zip(self.members, query)]
        return torch.stack(outs).transpose(1, 2)

    def _attend_varlen(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """Several new tokens per row (teacher forcing): the whole batch through :func:`varlen_attention`.

        Each (member, KV head) pair is one block: the group's ``g * q`` query rows over that head's
        kept prompt rows and the new steps (causal), heads of similar length padded together. That
        scores no row against another head's queries and costs a few kernels per length group
        instead of three per member.

        Parameters
        ----------
        query : Tensor, shape (B, Hq, q, d)

        Returns
        -------
        Tensor, shape (B, q, Hq, d)
        """
        members = self.members
        batch, hq, q, d = query.shape
        hkv = members[0].num_kv_heads
        # Block b * Hkv + h: member b's KV head h; members store their prompt rows head after head.
        lengths = torch.cat([member.head_lens for member in members])
        tails = [
            torch.stack([member._tail(getattr(member, name)) for member in members])
            for name in ("keys", "values")
        ]
        out = varlen_attention(
            query.reshape(batch * hkv, (hq // hkv) * q, d),
            torch.cat([member.prompt_keys for member in members]),
            torch.cat([member.prompt_values for member in members]),
            lengths,
            tails[0].reshape(batch * hkv, -1, d),
            tails[1].reshape(batch * hkv, -1, d),
            q,
            scaling,
        )  # (B * Hkv, g * q, d)
        return out.to(query.dtype).reshape(batch, hq, q, d).transpose(1, 2)

    # -- packed storage -----------------------------------------------------------------------------------
    def _pack(self) -> None:
        """Copy every member's stored rows into the batch buffers (once, before the first packed step)."""
        first = self.members[0]
        hkv, device, dtype = first.num_kv_heads, first.keys.device, first.keys.dtype
        d = first.keys.shape[1]
        self.prefix = max(member.used_rows for member in self.members)
        self.tail_capacity = max(max(m.tail_capacity - m.tail_len for m in self.members), 1)
        rows = self.prefix + hkv * self.tail_capacity
        batch = len(self.members)
        # Padding rows are masked but must be finite (0 * nan = nan); tail rows are written before use.
        self.keys = torch.empty((batch, rows, d), dtype=dtype, device=device)
        self.values = torch.empty((batch, rows, d), dtype=dtype, device=device)
        self._row_heads = torch.full((batch, rows), -1, dtype=torch.long, device=device)
        for b, member in enumerate(self.members):
            used = member.used_rows
            self.keys[b, :used] = member.keys[:used]
            self.values[b, :used] = member.values[:used]
            self.keys[b, used : self.prefix] = 0
            self.values[b, used : self.prefix] = 0
            self._row_heads[b, :used] = member._row_layout()[0][:used]
        self._row_heads[:, self.prefix :] = torch.arange(hkv, device=device).repeat(self.tail_capacity)
        self.bias = None

    def _pack_padded(self) -> None:
        """Copy every member's rows into per-head padded buffers, members of similar width together
        (:class:`lava.padded.PaddedGroups`; once, before the first step)."""
        members = self.members
        tails = {member.tail_len for member in members}
        if len(tails) != 1:
            raise ValueError(f"members of a batch must hold the same decode steps, got {sorted(tails)}")
        steps = tails.pop()
        capacity = steps + max(max(m.tail_capacity - m.tail_len for m in members), 1)
        widths = [int(member.head_lens.max()) for member in members]  # host metadata, no sync
        groups = width_groups(widths, PAD_SLACK)  # padding within the single cache's bound
        stores = [self._padded_store([members[b] for b in group], steps, capacity) for group in groups]
        self.padded_store = PaddedGroups(stores, groups)

    def _padded_store(self, members: list[CompressedLayer], steps: int, capacity: int) -> PaddedStore:
        first = members[0]
        hkv, device, dtype = first.num_kv_heads, first.keys.device, first.keys.dtype
        d = first.keys.shape[-1]
        width = max(int(member.head_lens.max()) for member in members)
        shape = (len(members), hkv, width + capacity, d)
        # Padding and the room not yet written must be finite (0 * nan = nan).
        keys = torch.zeros(shape, dtype=dtype, device=device)
        values = torch.zeros(shape, dtype=dtype, device=device)
        for b, member in enumerate(members):
            for dst, src in ((keys, member.keys), (values, member.values)):
                if member.padded:
                    dst[b, :, : member.width] = src[:, : member.width]
                else:
                    dst[b, member.row_head, member.row_slot] = src[: member.num_prompt_rows]
                dst[b, :, width : width + steps] = member._tail(src)
            if self.take_storage:
                member.release_storage()
        lens = torch.stack([member.head_lens for member in members]).to(device)  # (B, Hkv)
        return PaddedStore(keys, values, lens, width, steps)

    def _build_bias(self, num_query_heads: int, dtype: torch.dtype) -> None:
        hkv = self.members[0].num_kv_heads
        query_kv_head = torch.arange(num_query_heads, device=self.keys.device) // (num_query_heads // hkv)
        visible = self._row_heads[:, None, :] == query_kv_head[None, :, None]  # (B, Hq, R)
        self.bias = torch.zeros(visible.shape, dtype=dtype, device=self.keys.device).masked_fill_(
            ~visible, float("-inf")
        )

    def _append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append one step, ``keys``/``values`` of shape (B, Hkv, d); doubles the room when full."""
        hkv = keys.shape[1]
        if self.tail_len == self.tail_capacity:
            self._grow(2 * self.tail_capacity)
        start = self.prefix + hkv * self.tail_len
        self.keys[:, start : start + hkv] = keys
        self.values[:, start : start + hkv] = values
        self.tail_len += 1

    def _grow(self, tail_capacity: int) -> None:
        hkv = self.members[0].num_kv_heads
        extra = hkv * (tail_capacity - self.tail_capacity)
        self.keys = torch.cat(
            [self.keys, self.keys.new_empty(self.keys.shape[0], extra, self.keys.shape[2])], 1
        )
        self.values = torch.cat(
            [self.values, self.values.new_empty(self.values.shape[0], extra, self.values.shape[2])], 1
        )
        heads = torch.arange(hkv, device=self.keys.device).repeat(tail_capacity - self.tail_capacity)
        self._row_heads = torch.cat([self._row_heads, heads.expand(self._row_heads.shape[0], -1)], 1)
        self.tail_capacity = tail_capacity
        self.bias = None

    def select(self, rows: list[int]) -> None:
        """Keep only the batch rows ``rows`` (in that order)."""
        self.members = [self.members[r] for r in rows]
        if self.padded:
            self.padded_store.select(rows)
        elif self.packed:
            index = torch.tensor(rows, device=self.keys.device)
            self.keys, self.values = self.keys[index], self.values[index]
            self._row_heads = self._row_heads[index]
            if self.bias is not None:
                self.bias = self.bias[index]

    # -- transformers CacheLayerMixin --------------------------------------------------------------------
    def reset(self) -> None:
        raise RuntimeError("a BatchedCache cannot be reset; build a new one")


def batched_sliding(members: list[SlidingLayer], take_storage: bool = False) -> SlidingLayer:
    """One sliding layer whose row ``b`` is member ``b``'s window (members at the same position).

    The members are not appended to; with ``take_storage`` their tensors are released once copied."""
    lengths = {member.get_seq_length() for member in members}
    if len(lengths) != 1:
        raise ValueError(f"members of a batch must be at the same position, got {sorted(lengths)}")
    first = members[0]
    batch = SlidingLayer(first.sliding_window)
    batch.lazy_initialization(first.keys, first.values)
    batch.keys = torch.cat([member.keys for member in members])
    batch.values = torch.cat([member.values for member in members])
    batch.cumulative_length = lengths.pop()
    if take_storage:
        for member in members:
            member.release_storage()
    return batch


class BatchedCache(Cache):
    """A batch of :class:`CompressedCache` objects of one prompt, all at the same position.

    Parameters
    ----------
    caches : list of CompressedCache
        Built for the same prompt (same length, same number of layers). In packed and padded mode
        the batch keeps the decode steps in its own buffers: the members' storage stays as built.
    take_storage : bool
        Release each member's key/value buffers once the batch has copied them (a sweep that decodes
        each cache once keeps one copy, not two). The members then cannot attend any more.
    """

    def __init__(self, caches: list[CompressedCache], take_storage: bool = False) -> None:
        lengths = {c.get_seq_length() for c in caches}
        if len(lengths) != 1:
            raise ValueError(f"caches of a batch must be at the same position, got lengths {sorted(lengths)}")
        super().__init__(layers=[])
        self.caches = list(caches)
        for i in range(caches[0].num_layers):
            members = [c.layers[i] for c in caches]
            if isinstance(members[0], SlidingLayer):
                self.layers.append(batched_sliding(members, take_storage))
            else:
                self.layers.append(BatchedLayer(members, take_storage))

    def write_back_windows(self) -> None:
        """Hand row ``b`` of every batched sliding window back to member cache ``b``.

        A forward of several tokens per row appends the new entries of the compressed layers to
        the members themselves (:meth:`BatchedLayer.update`), but a sliding layer steps the batch's
        own ``B``-row window (:func:`batched_sliding`), so after it the members' windows still end
        before the new tokens. This gives each member its row (an owned copy) and the new position:
        the member then holds what a forward through it alone would have left, and a batch built
        from the members later (the decode after a question prefill) starts from there.

        Raises
        ------
        RuntimeError
            When a layer keeps its rows in its own buffers (packed or padded one-token steps):
            those steps never reached the members, so writing the windows alone would leave them
            inconsistent.
        """
        for layer in self.layers:
            if isinstance(layer, BatchedLayer) and layer.packed:
                raise RuntimeError(
                    "the batch decoded one-token steps in its own buffers: the members lack them"
                )
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, SlidingLayer):
                continue
            for b, cache in enumerate(self.caches):
                member = cache.layers[i]
                member.keys = layer.keys[b : b + 1].clone()  # owned: the batch's tensor can go
                member.values = layer.values[b : b + 1].clone()
                member.cumulative_length = layer.cumulative_length

    def select(self, rows: list[int]) -> None:
        """Keep only the batch rows ``rows`` (in that order)."""
        self.caches = [self.caches[r] for r in rows]
        for layer in self.layers:
            if isinstance(layer, SlidingLayer):
                layer.batch_select_indices(torch.tensor(rows, device=layer.keys.device))
            else:
                layer.select(rows)
