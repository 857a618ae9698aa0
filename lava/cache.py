"""A transformers ``Cache`` whose KV heads hold different numbers of entries.

Per layer, keys and values live in one buffer each, in one of two layouts chosen by the decode
kernel of the device (:func:`lava.attention.decode_kernel`):

- packed (CPUs, flash-attn): ``(rows, d)``, the kept prompt entries head after head (each head's
  kept positions in order, then the window), followed by room for the decode steps, token after
  token. Nothing is padded and nothing evicted is kept or masked. Decode attention is one masked
  matmul (:func:`lava.attention.packed_attention`) or flash-attn's varlen kernel.
- padded (CUDA without flash-attn): ``(Hkv, W + T, d)``, head ``h``'s kept rows in ``[0, len_h)``,
  zeros up to the layer's longest head ``W``, then decode step ``t`` at ``W + t``. Decode attention
  is one SDPA call (:func:`lava.attention.padded_attention`). A layer whose padding would exceed
  :data:`lava.attention.PAD_SLACK` of its rows stays packed.

In both, the room reserved for ``max_new_tokens`` decode steps is doubled when full, so an append
is an in-place write, amortised O(1), that never moves the prompt rows.

The logical sequence length stays the uncompressed one, so RoPE positions continue correctly.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from lava.attention import (
    FLASH_VARLEN,
    MASKED_MATMUL,
    PAD_SLACK,
    SDPA_PADDED,
    decode_bias,
    decode_kernel,
    flash_packed_attention,
    full_prefill_attention,
    logits_dtype,
    packed_attention,
)
from lava.compat import require_transformers
from lava.padded import PaddedStore
from lava.policy import BudgetPlan, ScoredLayer, evicts, keep_all_ranks, kept_entries, score_layer

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
    is_croppable = True  # back to any length >= the prompt (decode steps only)

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
        self.row_head = torch.zeros(0, dtype=torch.long, device="cpu")  # (N,) KV head of each prompt row
        self.row_pos = torch.zeros(0, dtype=torch.long)  # (N,) token position of each prompt row
        self.row_rank = torch.zeros(0, dtype=torch.long)  # (N,) rank by score in its head; -1 = window
        # (Hkv,) kept rows per head, on the host: read there, once per layer
        self.head_lens = torch.zeros(0, dtype=torch.long, device="cpu")
        self.row_slot = torch.zeros(0, dtype=torch.long)  # (N,) index of each prompt row within its head
        self.kernel = MASKED_MATMUL  # decode kernel, and so the layout of keys/values
        self.width = 0  # padded layout: the longest head's prompt rows (decode step t at width + t)
        self.entry_bytes = 0  # bytes of one key + value entry (kept when a batch takes the buffers)
        self.padded_store: PaddedStore | None = None  # padded layout: keys/values are views of its buffers
        self.released_bytes = 0  # buffer bytes handed to a batch (release_storage)
        self.cu_seqlens: torch.Tensor | None = None
        self.tail_len = 0
        self.tail_capacity = 0
        self._bias: torch.Tensor | None = None  # (Hq, rows) one-token decode mask, built on first use

    # -- transformers CacheLayerMixin --------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        store = self.padded_store
        if store is not None and key_states.shape[2] == 1 and store.tail_len < store.capacity:
            store.append(key_states, value_states)  # the decode step, in as few operations as possible
            self.tail_len += 1
            self.seq_len += 1
            key_states._lava_layer = self
            return key_states, value_states
        if key_states.shape[0] != 1:
            raise ValueError("CompressedCache supports batch size 1; run samples one at a time")
        if not self.is_initialized:
            self.take_prompt(key_states[0], value_states[0])
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

    def take_prompt(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Hold the whole prompt's ``keys`` and ``values`` (Hkv, n, d) until :meth:`store` picks the kept
        entries. Does not count the tokens: :meth:`update` adds them, a cache built from a shared
        prefill sets ``seq_len`` itself (:meth:`CompressedCache.store_prefill`)."""
        self.lazy_initialization(keys, values)
        self.full_keys, self.full_values = keys, values
        self.num_kv_heads = keys.shape[0]

    def store_whole_prompt(self, reserve: int) -> None:
        """Keep every prompt entry (the prompt fits the budget: nothing to evict)."""
        hkv, n, _ = self.full_keys.shape
        device = self.full_keys.device
        self.store(keep_all_ranks(hkv, n, device), torch.zeros(hkv, dtype=torch.long, device=device), reserve)

    # -- storage ------------------------------------------------------------------------------------------
    @property
    def padded(self) -> bool:
        return self.kernel == SDPA_PADDED

    @property
    def used_rows(self) -> int:
        """Stored entries: the prompt entries and the decode steps stored so far."""
        return self.num_prompt_rows + self.num_kv_heads * self.tail_len

    @property
    def prompt_keys(self) -> torch.Tensor | None:
        """(N, d) kept prompt keys, head after head (a gathered copy in the padded layout)."""
        return self._prompt_rows(self.keys)

    @property
    def prompt_values(self) -> torch.Tensor | None:
        return self._prompt_rows(self.values)

    def _prompt_rows(self, buffer: torch.Tensor | None) -> torch.Tensor | None:
        if buffer is None:
            return None
        if self.padded:
            return buffer[self.row_head, self.row_slot]
        return buffer[: self.num_prompt_rows]

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
        hkv, device = self.num_kv_heads, keys.device
        tail_capacity = max(tail_capacity, 1)
        head_lens = torch.bincount(heads.cpu(), minlength=hkv)  # one host read per layer, not per step
        lens = head_lens.to(device)
        self.row_slot = torch.arange(n, device=device) - (lens.cumsum(0) - lens)[heads]
        width = int(head_lens.max()) if n else 0
        self.kernel = decode_kernel(device)
        if self.kernel == SDPA_PADDED and hkv * width > (1 + PAD_SLACK) * n:
            self.kernel = MASKED_MATMUL  # padding would cost more memory than it saves time
        self.padded_store = None
        if self.padded:
            if rows is not None:
                keys, values = keys.index_select(0, rows), values.index_select(0, rows)
            new_keys = keys.new_zeros((1, hkv, width + tail_capacity, d))  # padding must be finite
            new_values = values.new_zeros((1, hkv, width + tail_capacity, d))
            new_keys[0, heads, self.row_slot] = keys
            new_values[0, heads, self.row_slot] = values
            self.padded_store = PaddedStore(new_keys, new_values, lens[None], width)
            new_keys, new_values = new_keys[0], new_values[0]
        else:
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
        self.width = width
        self.entry_bytes = 2 * d * new_keys.element_size()
        self.row_head, self.row_pos, self.row_rank = heads, pos, rank
        self.head_lens = head_lens
        self.cu_seqlens = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
        self.tail_len = 0
        self.tail_capacity = tail_capacity
        self._bias = None

    def _append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append ``q`` steps, ``keys``/``values`` of shape (Hkv, q, d); doubles the room when full."""
        q = keys.shape[1]
        if self.padded_store is not None:
            if self.padded_store.append(keys[None], values[None]):  # grew: new buffers
                self.keys, self.values = self.padded_store.keys[0], self.padded_store.values[0]
                self.tail_capacity = self.padded_store.capacity
            self.tail_len += q
            return
        if self.tail_len + q > self.tail_capacity:
            self._grow(max(2 * self.tail_capacity, self.tail_len + q))
        start = self.used_rows
        stop = start + self.num_kv_heads * q
        self.keys[start:stop].view(q, self.num_kv_heads, -1).copy_(keys.transpose(0, 1))
        self.values[start:stop].view(q, self.num_kv_heads, -1).copy_(values.transpose(0, 1))
        self.tail_len += q

    def _grow(self, tail_capacity: int) -> None:
        for name in ("keys", "values"):
            old = getattr(self, name)
            used = self.used_rows
            new = old.new_empty((self.num_prompt_rows + self.num_kv_heads * tail_capacity, old.shape[1]))
            new[:used] = old[:used]
            setattr(self, name, new)
        self.tail_capacity = tail_capacity
        self._bias = None

    def release_storage(self) -> None:
        """Free the key/value buffers (a batch has copied them); the layer can then only report."""
        self.released_bytes = sum(b.untyped_storage().nbytes() for b in (self.keys, self.values))
        self.keys = self.values = self.padded_store = None

    def crop(self, max_length: int) -> None:
        """Drop decode steps so that the layer holds ``max_length`` tokens (negative: drop that many).

        Only decode steps can go: the prompt entries were chosen for the whole prompt."""
        if max_length < 0:
            max_length = self.seq_len + max_length
        drop = self.seq_len - max_length
        if drop <= 0:
            return
        if drop > self.tail_len:
            raise ValueError(
                f"cannot crop to {max_length} tokens: only the {self.tail_len} decode steps after the "
                f"{self.seq_len - self.tail_len}-token prompt can be dropped"
            )
        self.tail_len -= drop
        self.seq_len -= drop
        if self.padded_store is not None:
            self.padded_store.crop(self.tail_len)

    def _tail(self, buffer: torch.Tensor) -> torch.Tensor:
        """(Hkv, T, d) view of the decode entries."""
        if self.padded:
            return buffer[:, self.width : self.width + self.tail_len]
        start = self.num_prompt_rows
        rows = buffer[start : start + self.num_kv_heads * self.tail_len]
        return rows.view(self.tail_len, self.num_kv_heads, buffer.shape[-1]).transpose(0, 1)

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
        if self.padded_store is not None:
            return self.padded_store.attend(query, scaling)
        if self.full_keys is not None:  # prefill: full attention, then compress this layer
            out = full_prefill_attention(query, self.full_keys[None], self.full_values[None], scaling)
            self.parent.compress_layer(self.layer_idx, query[0], scaling)
            return out
        return self.attend_stored(query[0], scaling).transpose(0, 1).unsqueeze(0)

    def attend_stored(self, q: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention of new queries ``q`` (Hq, steps, d) over the stored entries -> (Hq, steps, d).

        The new steps must already be appended (causal among themselves)."""
        hq, steps = q.shape[0], q.shape[1]
        if self.padded_store is not None:
            return self.padded_store.attend(q[None], scaling)[0].transpose(0, 1)
        if steps == 1 and self.kernel == FLASH_VARLEN:
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
    applies them to its layers. A cache built from a shared prefill (:func:`lava.prefill.build_cache_from_capture`)
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
        n = layer.full_keys.shape[1]
        self.prompt_len = n
        t0, c0 = time.perf_counter(), time.process_time()
        if not evicts(self.method, n):  # nothing to evict: keep the whole prompt
            layer.store_whole_prompt(self.reserve)
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

    @torch.no_grad()
    def store_prefill(
        self, keys: list[torch.Tensor], values: list[torch.Tensor], scored: list[ScoredLayer] | None
    ) -> None:
        """Fill every layer at once from a prefill done elsewhere (:func:`lava.prefill.build_cache_from_capture`).

        The layers are allocated in order through the same :class:`~lava.policy.BudgetPlan` as the
        online path, and each is stored once with its final caps, so the kept entries equal those
        of a cache compressed during its own prefill.

        Parameters
        ----------
        keys, values : list of Tensor, shape (Hkv, n, d)
            Each layer's whole prompt (post-RoPE keys). Not modified: the stored entries are copies.
        scored : list of ScoredLayer or None
            The method's scorer on every layer; None when the prompt fits the budget. Shared with
            other caches: its ranks are read, never released here.
        """
        n = keys[0].shape[1]
        self.prompt_len = n
        caps = None
        if evicts(self.method, n):
            self.compressed = True
            for layer_scores in scored:
                self.plan.add(layer_scores)
            caps = self.plan.final_caps()
        for j, layer in enumerate(self.layers):
            layer.take_prompt(keys[j], values[j])
            layer.seq_len = n
            if caps is None:
                layer.store_whole_prompt(self.reserve)
            else:
                layer.prefix_kept = caps[j]
                layer.store(scored[j].ranks, caps[j], self.reserve)

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
        """Bytes of the stored prompt entries (keys and values): entries x 2 x head dim x item size."""
        return sum(layer.num_prompt_rows * layer.entry_bytes for layer in self.layers)

    def storage_bytes(self) -> int:
        """Bytes of every key/value buffer: the prompt entries plus the room reserved for decoding and,
        in the padded layout, the padding."""
        total = 0
        for layer in self.layers:
            if layer.keys is None:  # released to a batch: what it held
                total += layer.released_bytes
                continue
            total += layer.keys.untyped_storage().nbytes() + layer.values.untyped_storage().nbytes()
        return total

    def report(self) -> dict[str, Any]:
        kept = self.kept_per_head()
        entries = sum(sum(h) for h in kept)
        cache_bytes = self.prompt_bytes()
        return {
            "kept_per_head": kept,
            "kept_entries": entries,
            "cache_bytes": cache_bytes,
            "decode_reserve_bytes": self.storage_bytes() - cache_bytes,
            "entry_bytes": self.layers[0].entry_bytes,
            "compressed": self.compressed,
        }
