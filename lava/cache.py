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

Hybrid models (Gemma 3: five sliding-window layers per global layer) keep transformers' rolling cache
in their sliding layers (:class:`SlidingLayer`, bounded by the window, never compressed); only the
global layers are compressed, and the budget, the layer allocation and the budget invariants are
over those layers alone (:func:`layer_windows` tells the kinds apart as transformers does).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
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
from lava.errors import UserError
from lava.padded import PaddedStore
from lava.policy import (
    BudgetPlan,
    ScoredLayer,
    evicts,
    keep_all_ranks,
    kept_entries,
    score_by_model_pass,
    score_layer,
)

require_transformers()  # before the import below, which fails on transformers without CacheLayerMixin
from transformers.cache_utils import (  # noqa: E402
    Cache,
    CacheLayerMixin,
    DynamicLayer,
    DynamicSlidingWindowLayer,
)

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


class SlidingLayer(DynamicSlidingWindowLayer):
    """A sliding-window layer of a hybrid model (Gemma 3's local layers): transformers' own rolling
    cache, never compressed.

    It is bounded already: after the prompt it holds the last ``sliding_window - 1`` entries of each
    KV head (a new token attends to those and to itself), and every decode step drops the oldest.
    Its key tensor is not tagged for :func:`lava.attention.lava_attention_forward`, so its attention
    is transformers' SDPA under the model's sliding-window mask, exactly as with a ``DynamicCache``.
    It reports what it kept of the prompt as a compressed layer does (``head_lens``, ``positions``,
    ``num_prompt_rows``, ``entry_bytes``). Several rows (a :class:`lava.batch.BatchedCache`) are fine.
    """

    def __init__(self, sliding_window: int) -> None:
        super().__init__(sliding_window=sliding_window)
        self.prompt_len = 0  # tokens of the prompt
        self.prompt_kept = 0  # entries per KV head kept of the prompt (the last ones)
        self.num_kv_heads = 0
        self.entry_bytes = 0  # bytes of one key + value entry
        self.released_bytes = 0  # buffer bytes handed to a batch (release_storage)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        prompt = self.get_seq_length() == 0
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        if prompt:
            self._kept_prompt(key_states.shape[2])
        return keys, values

    def store_prompt(self, keys: torch.Tensor, values: torch.Tensor, prompt_len: int) -> None:
        """Fill the layer from a prefill done elsewhere (:meth:`CompressedCache.store_prefill`).

        ``keys``/``values`` (B, Hkv, m, d) are the last ``m`` of the prompt's ``prompt_len`` entries,
        ``m`` at least what the layer keeps; a tensor of exactly that size is shared, not copied
        (updates concatenate into new tensors, never write in place)."""
        self.lazy_initialization(keys, values)
        self.keys = keys[:, :, -self.sliding_window + 1 :]  # transformers' own slice of the window
        self.values = values[:, :, -self.sliding_window + 1 :]
        self.cumulative_length = prompt_len
        self._kept_prompt(prompt_len)

    def _kept_prompt(self, prompt_len: int) -> None:
        # The kept window can be a view of the whole prompt's keys: own it, so that they can be freed.
        self.keys, self.values = _owned(self.keys), _owned(self.values)
        self.prompt_len = prompt_len
        self.num_kv_heads, self.prompt_kept = self.keys.shape[1], self.keys.shape[2]
        self.entry_bytes = 2 * self.keys.shape[-1] * self.keys.element_size()

    def reset(self) -> None:
        self.__init__(self.sliding_window)

    @property
    def head_lens(self) -> torch.Tensor:
        """(Hkv,) entries kept of the prompt per KV head, on the host (as :attr:`CompressedLayer.head_lens`)."""
        return torch.full((self.num_kv_heads,), self.prompt_kept, dtype=torch.long, device="cpu")

    @property
    def num_prompt_rows(self) -> int:
        return self.num_kv_heads * self.prompt_kept

    @property
    def positions(self) -> list[torch.Tensor]:
        """Per KV head: the prompt positions kept, the last ``prompt_kept`` ones."""
        device = self.keys.device if self.keys is not None else "cpu"
        kept = torch.arange(self.prompt_len - self.prompt_kept, self.prompt_len, device=device)
        return [kept] * self.num_kv_heads

    def release_storage(self) -> None:
        """Drop the key/value tensors (a batch has copied them); the layer can then only report."""
        self.released_bytes = (
            self.keys.nbytes + self.values.nbytes
        )  # as CompressedCache.storage_bytes counts it
        self.keys = self.values = None


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, or a copy of it when it views a larger storage (which it would keep alive)."""
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


def layer_windows(config: Any) -> list[int | None]:
    """Per decoder layer of a model config: its sliding window, or None for a global layer.

    The layers are told apart as transformers' own ``DynamicCache`` does (``config.layer_types``, or
    ``sliding_window`` in models without layer types), so a compressed cache's sliding layers are
    exactly those that a full cache keeps as rolling windows. Chunked-attention layers roll the same
    way (only their mask differs) and count as sliding.

    Raises
    ------
    UserError
        For a layer kind the compressed cache does not handle (linear attention, shared KV, ...).
    """
    from transformers import DynamicCache

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = DynamicCache(config=config).layers
    if not layers:  # a cache built lazily: every layer is a plain one
        return [None] * text.num_hidden_layers
    windows: list[int | None] = []
    for index, layer in enumerate(layers):
        if isinstance(layer, DynamicSlidingWindowLayer):
            windows.append(int(layer.sliding_window))
        elif type(layer) is DynamicLayer:
            windows.append(None)
        else:
            raise UserError(
                f"layer {index} of this model uses a {type(layer).__name__} cache, which the compressed "
                "cache does not support (it handles full-attention and sliding-window layers)"
            )
    return windows


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

    In a hybrid model the sliding-window layers are :class:`SlidingLayer` (rolling, not compressed)
    and the plan sees the global layers alone, in order: the budget is ``global layers x kv_heads x
    budget`` entries, the layer allocators (PyramidKV's schedule, LAVa's entropy, CAKE's preference)
    split it over the global layers, and :attr:`stats` and :attr:`layer_budgets` list global layers.

    Parameters
    ----------
    method : CompressionMethod
        Scorer, layer allocator and head allocator, window and budget.
    num_layers : int
        Decoder layers of the model.
    reserve : int
        Decode entries preallocated per head (usually ``max_new_tokens``).
    windows : sequence of int or None, optional
        Per layer, its sliding window or None for a global layer (:func:`layer_windows`); default:
        every layer global.

    Attributes
    ----------
    timings : dict
        Wall seconds spent in ``"scoring"`` and ``"allocation"`` (layer + head allocation and packing),
        and the process CPU seconds of each (``"scoring_cpu"``, ``"allocation_cpu"``, all threads).
        A scorer's model pass (KVzip's reconstruction forwards) counts as scoring.

    Notes
    -----
    A scorer that needs a model pass (:attr:`lava.scorers.Scorer.needs_model_pass`) cannot score a
    layer before the whole prompt is prefilled: every global layer then keeps its full prompt through
    the prefill, and :meth:`finish_model_pass` (run after the prefill forward by the hook
    :meth:`watch_prefill` installs) scores, allocates and stores them all, in layer order.
    """

    def __init__(
        self,
        method: CompressionMethod,
        num_layers: int,
        reserve: int = 64,
        windows: Sequence[int | None] | None = None,
    ) -> None:
        windows = [None] * num_layers if windows is None else list(windows)
        if len(windows) != num_layers:
            raise ValueError(f"{len(windows)} layer windows for {num_layers} layers")
        layers = []
        super().__init__(layers=layers)
        self.layers.extend(
            CompressedLayer(self, i) if window is None else SlidingLayer(window)
            for i, window in enumerate(windows)
        )
        self.method = method
        self.num_layers = num_layers
        self.global_layers = [i for i, window in enumerate(windows) if window is None]
        self._plan_index = {layer: j for j, layer in enumerate(self.global_layers)}  # layer -> plan index
        self.reserve = reserve
        self.plan = BudgetPlan(method, len(self.global_layers))
        self.prompt_len = 0
        self.compressed = False
        self.timings = {"scoring": 0.0, "allocation": 0.0, "scoring_cpu": 0.0, "allocation_cpu": 0.0}
        # A scorer that needs a model pass (lava.scorers.base.needs_model_pass; not imported: lava.scorers
        # imports this module) is run after the prefill, by finish_model_pass.
        self.deferred = bool(getattr(method.scorer, "needs_model_pass", False))

    @property
    def stats(self) -> list[float | None]:
        """Layer statistic of each scored (global) layer."""
        return [layer.stat for layer in self.plan.layers]

    @property
    def layer_budgets(self) -> list[int]:
        """Current non-window budget of each allocated (global) layer."""
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
        if self.deferred:  # the layer keeps its whole prompt until finish_model_pass
            return
        scored = score_layer(self.method, query, layer.full_keys, layer.full_values, scaling)
        t1, c1 = self._add_time("scoring", t0, c0)
        self.apply_plan(self.plan.add(scored), last=layer_idx == self.global_layers[-1])
        self._add_time("allocation", t1, c1)

    def watch_prefill(self, model: Any) -> None:
        """Run :meth:`finish_model_pass` right after ``model``'s forward that prefills this cache.

        A forward hook on ``model``, removed once it has fired: it acts on the first call whose cache
        is this one (``cache=`` or ``past_key_values=``) and ignores any other. It holds the cache
        weakly; a cache dropped before its prefill removes the hook at the model's next call.
        """
        owner = weakref.ref(self)

        def after_forward(module: Any, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            cache = owner()
            if cache is None:
                handle.remove()
                return
            given = kwargs["cache"] if "cache" in kwargs else kwargs.get("past_key_values")
            if given is not cache:
                return
            handle.remove()
            input_ids = kwargs["input_ids"] if "input_ids" in kwargs else (args[0] if args else None)
            cache.finish_model_pass(module, input_ids)

        handle = model.register_forward_hook(after_forward, with_kwargs=True)

    @torch.no_grad()
    def finish_model_pass(self, model: Any, input_ids: torch.Tensor | None) -> None:
        """Score every prefilled global layer through the scorer's model pass, allocate and store them.

        The same scoring as a sweep's (:func:`lava.policy.score_by_model_pass`), then the layers go
        through the online plan in order, as :meth:`compress_layer` would have sent them. A no-op when
        nothing waits (the prompt fit the budget, or this already ran).
        """
        if not self.deferred or self.layers[self.global_layers[0]].full_keys is None:
            return
        if input_ids is None:
            raise ValueError(
                f"{type(self.method.scorer).__name__} needs the prompt's input_ids (not embeddings)"
            )
        t0, c0 = time.perf_counter(), time.process_time()
        layers = [
            (layer.keys[0], layer.values[0], layer.sliding_window)
            if isinstance(layer, SlidingLayer)
            else (layer.full_keys, layer.full_values, None)
            for layer in self.layers
        ]
        scored = score_by_model_pass(self.method, model, input_ids, layers)
        t1, c1 = self._add_time("scoring", t0, c0)
        for j, layer_scores in enumerate(scored):
            self.apply_plan(self.plan.add(layer_scores), last=j == len(scored) - 1)
        self._add_time("allocation", t1, c1)

    def _add_time(self, part: str, wall0: float, cpu0: float) -> tuple[float, float]:
        """Add the wall and process CPU time since (wall0, cpu0) to ``part``; returns the new marks."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.timings[part] += wall - wall0
        self.timings[f"{part}_cpu"] += cpu - cpu0
        return wall, cpu

    @torch.no_grad()
    def store_prefill(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        scored: list[ScoredLayer] | None,
        prompt_len: int | None = None,
    ) -> None:
        """Fill every layer at once from a prefill done elsewhere (:func:`lava.prefill.build_cache_from_capture`).

        The layers are allocated in order through the same :class:`~lava.policy.BudgetPlan` as the
        online path, and each is stored once with its final caps, so the kept entries equal those
        of a cache compressed during its own prefill.

        Parameters
        ----------
        keys, values : list of Tensor, shape (Hkv, n, d)
            Each layer's whole prompt (post-RoPE keys); for a sliding layer, at least its last
            ``sliding_window - 1`` entries (what it keeps, then shared). Not modified: the stored
            entries of a global layer are copies.
        scored : list of ScoredLayer or None
            The method's scorer on every global layer, in order; None when the prompt fits the
            budget. Shared with other caches: its ranks are read, never released here.
        prompt_len : int, optional
            ``n``; by default the length of the first global layer's keys.
        """
        n = keys[self.global_layers[0]].shape[1] if prompt_len is None else prompt_len
        self.prompt_len = n
        caps = None
        if evicts(self.method, n):
            self.compressed = True
            for layer_scores in scored:
                self.plan.add(layer_scores)
            caps = self.plan.final_caps()
        for j, layer in enumerate(self.layers):
            if isinstance(layer, SlidingLayer):
                layer.store_prompt(keys[j][None], values[j][None], n)
                continue
            layer.take_prompt(keys[j], values[j])
            layer.seq_len = n
            if caps is None:
                layer.store_whole_prompt(self.reserve)
            else:
                g = self._plan_index[j]
                layer.prefix_kept = caps[g]
                layer.store(scored[g].ranks, caps[g], self.reserve)

    def apply_plan(self, changed: list[int], last: bool) -> None:
        """Store newly allocated layers and lower the caps of earlier ones (repacked lazily).

        ``changed`` holds plan indices (the ``j``-th global layer)."""
        for j in changed:
            layer = self.layers[self.global_layers[j]]
            caps = self.plan.caps[j]
            layer.prefix_kept = caps
            if layer.full_keys is not None:
                layer.store(self.plan.layers[j].ranks, caps, self.reserve)
                self.plan.layers[j].ranks = None  # online, nobody else needs them
        if not changed:
            return
        for earlier in (self.layers[i] for i in self.global_layers[: max(changed) + 1]):
            if earlier.full_keys is not None or earlier.prefix_kept is None:
                continue
            window = self.method.window
            surplus = earlier.num_prompt_rows - int(earlier.prefix_kept.sum()) - earlier.num_kv_heads * window
            # Repack lazily: once a quarter of the rows can go, and for good after the last layer.
            if surplus > (0 if last else SHRINK_SLACK * earlier.num_prompt_rows):
                earlier.shrink(earlier.prefix_kept)

    # -- reporting ----------------------------------------------------------------------------------------
    def kept_per_head(self) -> list[list[int]]:
        """Stored prompt entries per layer and KV head (window included, decode tail excluded); a
        sliding layer's are the last ``sliding_window - 1`` prompt entries (all, for shorter prompts)."""
        return [layer.head_lens.tolist() for layer in self.layers]

    def prompt_bytes(self) -> int:
        """Bytes of the stored prompt entries (keys and values): entries x 2 x head dim x item size."""
        return sum(layer.num_prompt_rows * layer.entry_bytes for layer in self.layers)

    def storage_bytes(self) -> int:
        """Bytes of every key/value buffer: the prompt entries plus the room reserved for decoding and,
        in the padded layout, the padding. A sliding layer counts the window it holds (between decode
        steps its tensors can view a buffer one entry longer: transformers slices the concatenation),
        so that a report does not depend on whether the layer has rolled yet."""
        total = 0
        for layer in self.layers:
            if layer.keys is None:  # released to a batch: what it held
                total += layer.released_bytes
            elif isinstance(layer, SlidingLayer):
                total += layer.keys.nbytes + layer.values.nbytes
            else:
                total += layer.keys.untyped_storage().nbytes() + layer.values.untyped_storage().nbytes()
        return total

    def report(self) -> dict[str, Any]:
        kept = self.kept_per_head()
        entries = sum(sum(h) for h in kept)
        cache_bytes = self.prompt_bytes()
        return {
            "kept_per_head": kept,
            "kept_entries": entries,
            # the layers that are compressed; the others are sliding windows (hybrid models)
            "global_layers": list(self.global_layers),
            "cache_bytes": cache_bytes,
            "decode_reserve_bytes": self.storage_bytes() - cache_bytes,
            "entry_bytes": self.layers[0].entry_bytes,
            "compressed": self.compressed,
        }
