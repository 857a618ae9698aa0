"""A transformers ``Cache`` whose KV heads hold different numbers of entries.

Per layer, keys and values live in one ``(rows, d)`` buffer each: the kept prompt entries, head
after head (each head's kept positions in order, then the window), followed by room for the decode
steps, token after token. Nothing is padded to the longest head and nothing evicted is kept or
masked; the only spare rows are the ones reserved for ``max_new_tokens`` decode steps, doubled when
full, so an append is amortised O(1) and never moves the prompt rows. One decode attention call is a
single SDPA over the used rows with a static head mask (:func:`lava.attention.packed_attention`).

The logical sequence length stays the uncompressed one, so RoPE positions continue correctly.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from lava.attention import (
    decode_bias,
    flash_available,
    flash_packed_attention,
    full_prefill_attention,
    logits_dtype,
    packed_attention,
)
from lava.compat import require_transformers
from lava.policy import BudgetPlan, evicts, keep_all_ranks, kept_entries, ranks_by_score, score_layer

require_transformers()  # before the import below, which fails on transformers without CacheLayerMixin
from transformers.cache_utils import Cache, CacheLayerMixin  # noqa: E402

# An earlier layer whose budget went down is repacked once this fraction of its rows can be freed (and
# in any case after the last layer's compression): fewer copies, at most this much extra memory.
SHRINK_SLACK = 0.25

if TYPE_CHECKING:
    from lava.method import CompressionMethod


class UnboundedLayer(CacheLayerMixin):
    """The length answers of a cache layer with no maximum whose logical length is ``seq_len``.

    Compatibility with early transformers 5.x (from lava.compat.MIN_TRANSFORMERS): in 5.0 to 5.2 (at
    least) the mixin's abstract length method is ``get_max_cache_shape`` (no maximum: -1), and
    ``get_mask_sizes`` receives the ``cache_position`` tensor, not the query length.
    """

    seq_len: int = 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if isinstance(query_length, torch.Tensor):  # early 5.x passes cache_position
            query_length = query_length.shape[0]
        return self.seq_len + query_length, 0

    def get_seq_length(self) -> int:
        return self.seq_len

    def get_max_length(self) -> int:
        return -1

    def get_max_cache_shape(self) -> int:
        return -1


class CompressedLayer(UnboundedLayer):
    """One layer's per-head variable-length cache.

    ``keys`` and ``values`` are ``(rows, d)`` buffers: the ``num_prompt_rows`` kept prompt entries,
    head after head, then room for ``tail_capacity`` decode steps, token after token (row
    ``num_prompt_rows + t * Hkv + h`` holds step ``t`` of KV head ``h``).
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, parent: CompressedCache, layer_idx: int) -> None:
        super().__init__()
        self.parent = parent
        self.layer_idx = layer_idx
        self.seq_len = 0
        self.num_kv_heads = 0
        self.full_keys: torch.Tensor | None = None  # (Hkv, n, d) between prefill and compression
        self.full_values: torch.Tensor | None = None
        self.prefix_kept: torch.Tensor | None = None  # (Hkv,) top-k size per head
        self.num_prompt_rows = 0
        self.row_head = torch.zeros(0, dtype=torch.long)  # (N,) KV head of each prompt row
        self.row_pos = torch.zeros(0, dtype=torch.long)  # (N,) token position of each prompt row
        self.row_rank = torch.zeros(0, dtype=torch.long)  # (N,) rank by score in its head; -1 = window
        self.head_lens = torch.zeros(0, dtype=torch.long)
        self.cu_seqlens: torch.Tensor | None = None
        self.tail_len = 0
        self.tail_capacity = 0
        self._bias: torch.Tensor | None = None  # (Hq, rows) one-token decode mask, built on first use

    # -- transformers CacheLayerMixin --------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if key_states.shape[0] != 1:
            raise ValueError("CompressedCache supports batch size 1; run samples one at a time")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.full_keys, self.full_values = key_states[0], value_states[0]
            self.num_kv_heads = key_states.shape[1]
        elif self.full_keys is not None:
            raise RuntimeError(
                "layer was not compressed after prefill: the model must use attn_implementation='lava' "
                "(call lava.attention.enable(model))"
            )
        else:
            self._append(key_states[0], value_states[0])
        self.seq_len += key_states.shape[2]
        key_states._lava_layer = self  # routes this layer's attention call to `attend`
        return key_states, value_states

    def reset(self) -> None:
        self.__init__(self.parent, self.layer_idx)

    # -- storage ------------------------------------------------------------------------------------------
    @property
    def used_rows(self) -> int:
        """Rows of the buffers in use: the prompt entries and the decode steps stored so far."""
        return self.num_prompt_rows + self.num_kv_heads * self.tail_len

    @property
    def prompt_keys(self) -> torch.Tensor | None:
        """(N, d) kept prompt keys, head after head."""
        return None if self.keys is None else self.keys[: self.num_prompt_rows]

    @property
    def prompt_values(self) -> torch.Tensor | None:
        return None if self.values is None else self.values[: self.num_prompt_rows]

    @property
    def positions(self) -> list[torch.Tensor]:
        """Per KV head: the sorted token positions it stores (kept prefix, then the window)."""
        return list(torch.split(self.row_pos, self.head_lens.tolist()))

    def store(self, rank: torch.Tensor, caps: torch.Tensor, reserve: int) -> None:
        """Keep, in head ``h``, the prompt positions ``p`` with ``rank[h, p] < caps[h]``.

        ``rank`` (Hkv, n) is each position's rank by score within its head, ``-1`` for positions that
        are always kept (the window, or everything when nothing is evicted).
        """
        keys, values = self.full_keys, self.full_values
        heads, pos = kept_entries(rank, caps)
        self._set_prompt(
            _gather_rows(keys, heads, pos),
            _gather_rows(values, heads, pos),
            None,
            heads,
            pos,
            rank[heads, pos],
            reserve,
        )
        self.full_keys = self.full_values = None

    def shrink(self, caps: torch.Tensor) -> None:
        """Keep only the prompt rows whose rank is below their head's new cap (a subset of what is stored)."""
        if self.tail_len:
            raise RuntimeError("a layer can only shrink before decoding starts")
        rows = (self.row_rank < caps.to(self.row_rank.device)[self.row_head]).nonzero().squeeze(1)
        self._set_prompt(
            self.prompt_keys,
            self.prompt_values,
            rows,
            self.row_head[rows],
            self.row_pos[rows],
            self.row_rank[rows],
            self.tail_capacity,
        )

    def _set_prompt(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        rows: torch.Tensor | None,
        heads: torch.Tensor,
        pos: torch.Tensor,
        rank: torch.Tensor,
        tail_capacity: int,
    ) -> None:
        """Copy ``keys[rows]``/``values[rows]`` (all rows when ``rows`` is None) into fresh buffers with
        room for ``tail_capacity`` steps."""
        n, d = (keys.shape[0] if rows is None else rows.shape[0]), keys.shape[1]
        hkv = self.num_kv_heads
        tail_capacity = max(tail_capacity, 1)
        new_keys = keys.new_empty((n + hkv * tail_capacity, d))
        new_values = values.new_empty((n + hkv * tail_capacity, d))
        if rows is None:
            new_keys[:n].copy_(keys)
            new_values[:n].copy_(values)
        else:
            torch.index_select(keys, 0, rows, out=new_keys[:n])
            torch.index_select(values, 0, rows, out=new_values[:n])
        self.keys, self.values = new_keys, new_values
        self.num_prompt_rows = n
        self.row_head, self.row_pos, self.row_rank = heads, pos, rank
        self.head_lens = torch.bincount(heads.cpu(), minlength=hkv)
        self.cu_seqlens = torch.nn.functional.pad(self.head_lens.cumsum(0), (1, 0)).to(
            keys.device, torch.int32
        )
        self.tail_len = 0
        self.tail_capacity = tail_capacity
        self._bias = None

    def _append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append ``q`` steps, ``keys``/``values`` of shape (Hkv, q, d); doubles the room when full."""
        q = keys.shape[1]
        if self.tail_len + q > self.tail_capacity:
            self._grow(max(2 * self.tail_capacity, self.tail_len + q))
        start = self.used_rows
        stop = start + self.num_kv_heads * q
        self.keys[start:stop].view(q, self.num_kv_heads, -1).copy_(keys.transpose(0, 1))
        self.values[start:stop].view(q, self.num_kv_heads, -1).copy_(values.transpose(0, 1))
        self.tail_len += q

    def _grow(self, tail_capacity: int) -> None:
        used = self.used_rows
        rows = self.num_prompt_rows + self.num_kv_heads * tail_capacity
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_empty((rows, old.shape[1]))
            new[:used] = old[:used]
            setattr(self, name, new)
        self.tail_capacity = tail_capacity
        self._bias = None

    def _tail(self, buffer: torch.Tensor) -> torch.Tensor:
        """(Hkv, T, d) view of the decode entries."""
        start = self.num_prompt_rows
        rows = buffer[start : start + self.num_kv_heads * self.tail_len]
        return rows.view(self.tail_len, self.num_kv_heads, -1).transpose(0, 1)

    def _row_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """KV head and decode step (-1 for prompt rows) of every buffer row."""
        hkv, cap, device = self.num_kv_heads, self.tail_capacity, self.keys.device
        heads = torch.cat([self.row_head.to(device), torch.arange(hkv, device=device).repeat(cap)])
        steps = torch.cat(
            [
                torch.full((self.num_prompt_rows,), -1, dtype=torch.long, device=device),
                torch.arange(cap, device=device).repeat_interleave(hkv),
            ]
        )
        return heads, steps

    # -- attention ----------------------------------------------------------------------------------------
    def attend(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention output for this layer's call, shape (1, q, Hq, d)."""
        if self.full_keys is not None:  # prefill: full attention, then compress this layer
            out = full_prefill_attention(query, self.full_keys[None], self.full_values[None], scaling)
            self.parent.compress_layer(self.layer_idx, query[0], scaling)
            return out
        return self.attend_stored(query[0], scaling).transpose(0, 1).unsqueeze(0)

    def attend_stored(self, q: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention of new queries ``q`` (Hq, steps, d) over the stored entries -> (Hq, steps, d).

        The new steps must already be appended (causal among themselves)."""
        hq, steps = q.shape[0], q.shape[1]
        if steps == 1 and flash_available(q.device):
            return flash_packed_attention(
                q,
                self.prompt_keys,
                self.prompt_values,
                self.cu_seqlens,
                int(self.head_lens.max()),
                self._tail(self.keys),
                self._tail(self.values),
                scaling,
            )
        used = self.used_rows
        bias_dtype = logits_dtype(q.dtype)
        if self._bias is None or self._bias.shape[0] != hq or self._bias.dtype != bias_dtype:
            heads, row_steps = self._row_layout()
            self._bias = decode_bias(
                heads, row_steps, hq, self.num_kv_heads, 1, self.tail_capacity, bias_dtype
            )
        if steps == 1:
            bias = self._bias[:, :used]
        else:  # prompt columns depend on the head only: reuse the decode mask's, build the tail's
            prompt = self._bias[:, : self.num_prompt_rows].repeat_interleave(steps, dim=0)
            heads, row_steps = self._row_layout()
            start = self.num_prompt_rows
            tail = decode_bias(
                heads[start:used],
                row_steps[start:used],
                hq,
                self.num_kv_heads,
                steps,
                self.tail_len,
                bias_dtype,
            )
            bias = torch.cat([prompt, tail], dim=1)
        return packed_attention(q, self.keys[:used], self.values[:used], bias, scaling)


def _gather_rows(states: torch.Tensor, heads: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(N, d) rows ``states[heads, pos]`` of (Hkv, n, d) ``states``, reading only those rows.

    The prefill's keys and values are usually strided views (transposed projections); flattening them
    with ``reshape`` would copy the whole layer first (per layer and per cache built from a shared
    prefill: transient copies that the allocator keeps, about 300 MiB of RSS per cache at 8k tokens)."""
    hkv, n, d = states.shape
    if states.is_contiguous():
        return states.view(hkv * n, d).index_select(0, heads * n + pos)
    return states[heads, pos]


class CompressedCache(Cache):
    """Cache that compresses each layer right after its prefill, following a :class:`CompressionMethod`.

    The decisions (scores, layer and head caps) come from :mod:`lava.policy`; this class only
    applies them to its layers. A cache built from a shared prefill (:func:`lava.prefill.build_cache`)
    is the same object with every layer stored at once.

    Parameters
    ----------
    method : CompressionMethod
        Scorer, layer allocator and head allocator, window and budget.
    num_layers : int
        Decoder layers of the model.
    reserve : int
        Decode entries preallocated per head (usually ``max_new_tokens``).

    Attributes
    ----------
    timings : dict
        Wall seconds spent in ``"scoring"`` and ``"allocation"`` (layer + head allocation and packing),
        and the process CPU seconds of each (``"scoring_cpu"``, ``"allocation_cpu"``, all threads).
    """

    def __init__(self, method: CompressionMethod, num_layers: int, reserve: int = 64) -> None:
        layers = []
        super().__init__(layers=layers)
        self.layers.extend(CompressedLayer(self, i) for i in range(num_layers))
        self.method = method
        self.num_layers = num_layers
        self.reserve = reserve
        self.plan = BudgetPlan(method, num_layers)
        self.prompt_len = 0
        self.compressed = False
        self.timings = {"scoring": 0.0, "allocation": 0.0, "scoring_cpu": 0.0, "allocation_cpu": 0.0}

    @property
    def stats(self) -> list[float | None]:
        """Layer statistic of each scored layer."""
        return [layer.stat for layer in self.plan.layers]

    @property
    def layer_budgets(self) -> list[int]:
        """Current non-window budget of each allocated layer."""
        return self.plan.layer_budgets

    # Called by CompressedLayer.attend after the layer's full prefill attention.
    @torch.no_grad()
    def compress_layer(self, layer_idx: int, query: torch.Tensor, scaling: float) -> None:
        layer = self.layers[layer_idx]
        hkv, n, _ = layer.full_keys.shape
        self.prompt_len = n
        t0, c0 = time.perf_counter(), time.process_time()
        if not evicts(self.method, n):  # nothing to evict: keep the whole prompt
            layer.store(
                keep_all_ranks(hkv, n, layer.full_keys.device),
                torch.zeros(hkv, dtype=torch.long),
                self.reserve,
            )
            self._add_time("allocation", t0, c0)
            return
        self.compressed = True
        scored = score_layer(self.method, query, layer.full_keys, layer.full_values, scaling)
        t1, c1 = self._add_time("scoring", t0, c0)
        self.apply_plan(self.plan.add(scored), last=layer_idx == self.num_layers - 1)
        self._add_time("allocation", t1, c1)

    def _add_time(self, part: str, wall0: float, cpu0: float) -> tuple[float, float]:
        """Add the wall and process CPU time since (wall0, cpu0) to ``part``; returns the new marks."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.timings[part] += wall - wall0
        self.timings[f"{part}_cpu"] += cpu - cpu0
        return wall, cpu

    def apply_plan(self, changed: list[int], last: bool) -> None:
        """Store newly allocated layers and lower the caps of earlier ones (repacked lazily)."""
        for j in changed:
            layer = self.layers[j]
            caps = self.plan.caps[j]
            layer.prefix_kept = caps
            if layer.full_keys is not None:
                layer.store(self.plan.layers[j].ranks, caps, self.reserve)
                self.plan.layers[j].ranks = None  # online, nobody else needs them
        if not changed:
            return
        for earlier in self.layers[: max(changed) + 1]:
            if earlier.full_keys is not None or earlier.prefix_kept is None:
                continue
            window = self.method.window
            surplus = earlier.num_prompt_rows - int(earlier.prefix_kept.sum()) - earlier.num_kv_heads * window
            # Repack lazily: once a quarter of the rows can go, and for good after the last layer.
            if surplus > (0 if last else SHRINK_SLACK * earlier.num_prompt_rows):
                earlier.shrink(earlier.prefix_kept)

    # -- reporting ----------------------------------------------------------------------------------------
    def kept_per_head(self) -> list[list[int]]:
        """Stored prompt entries per layer and KV head (window included, decode tail excluded)."""
        return [layer.head_lens.tolist() for layer in self.layers]

    def prompt_bytes(self) -> int:
        """Bytes held by the stored prompt entries (keys and values), measured from the tensors."""
        total = 0
        for layer in self.layers:
            for tensor in (layer.prompt_keys, layer.prompt_values):
                if tensor is not None:
                    total += tensor.numel() * tensor.element_size()
        return total

    def storage_bytes(self) -> int:
        """Bytes of every key/value buffer: the prompt entries plus the room reserved for decoding."""
        total = 0
        for layer in self.layers:
            for tensor in (layer.keys, layer.values):
                if tensor is not None:
                    total += tensor.untyped_storage().nbytes()
        return total

    def report(self) -> dict[str, Any]:
        kept = self.kept_per_head()
        entries = sum(sum(h) for h in kept)
        first = self.layers[0].keys
        d = first.shape[-1] if first is not None else 0
        itemsize = first.element_size() if first is not None else 0
        cache_bytes = self.prompt_bytes()
        return {
            "kept_per_head": kept,
            "kept_entries": entries,
            "cache_bytes": cache_bytes,
            "decode_reserve_bytes": self.storage_bytes() - cache_bytes,
            "entry_bytes": 2 * d * itemsize,
            "compressed": self.compressed,
        }


# Kept for callers of the earlier names.
_kept = kept_entries
_ranks = ranks_by_score
