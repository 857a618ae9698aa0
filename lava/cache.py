"""A transformers ``Cache`` whose KV heads hold different numbers of entries.

Per layer, the compressed prompt is stored packed: one ``(N, d)`` key tensor and one value tensor,
head after head, each head's kept entries in positional order followed by the window. Nothing is
padded or masked in storage; the freed entries are really freed. Tokens appended after
compression go to a dense ``(Hkv, T, d)`` tail (every head gains one entry per step), preallocated
for ``max_new_tokens`` and doubled when full, so an append is amortised O(1).

The logical sequence length stays the uncompressed one, so RoPE positions continue correctly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from lava.attention import (
    flash_available,
    flash_packed_attention,
    full_prefill_attention,
    head_bias,
    packed_attention,
)

if TYPE_CHECKING:
    from lava.method import CompressionMethod


class CompressedLayer(CacheLayerMixin):
    """One layer's per-head variable-length cache."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, parent: CompressedCache, layer_idx: int) -> None:
        super().__init__()
        self.parent = parent
        self.layer_idx = layer_idx
        self.seq_len = 0
        self.full_keys: torch.Tensor | None = None  # (Hkv, n, d) between prefill and compression
        self.full_values: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None  # (Hkv, P) scorer output, kept for later shrinking
        self.order: torch.Tensor | None = None  # (Hkv, P) prefix positions by descending score
        self.prefix_kept: torch.Tensor | None = None  # (Hkv,) top-k size per head
        self.positions: list[torch.Tensor] = []  # per head: sorted positions stored (prefix + window)
        self.head_lens = torch.zeros(0, dtype=torch.long)
        self.row_head: torch.Tensor | None = None
        self.prefix_bias: torch.Tensor | None = None  # (N, Hq) decode mask, built on first use
        self.cu_seqlens: torch.Tensor | None = None
        self.tail_keys: torch.Tensor | None = None
        self.tail_values: torch.Tensor | None = None
        self.tail_len = 0

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

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seq_len + query_length, 0

    def get_seq_length(self) -> int:
        return self.seq_len

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.__init__(self.parent, self.layer_idx)

    # -- storage ------------------------------------------------------------------------------------------
    @property
    def num_entries(self) -> int:
        """Stored prompt entries (all heads), tail excluded."""
        return int(self.head_lens.sum())

    def store(self, positions: list[torch.Tensor], reserve: int) -> None:
        """Keep ``positions[h]`` (sorted token positions) of head ``h`` from the full prompt KV."""
        keys, values = self.full_keys, self.full_values
        self._pack(
            [keys[h, pos] for h, pos in enumerate(positions)],
            [values[h, pos] for h, pos in enumerate(positions)],
        )
        self.positions = positions
        self.full_keys = self.full_values = None
        hkv, _, d = keys.shape
        self.tail_keys = keys.new_empty((hkv, max(reserve, 1), d))
        self.tail_values = values.new_empty((hkv, max(reserve, 1), d))
        self.tail_len = 0

    def shrink(self, positions: list[torch.Tensor]) -> None:
        """Keep only ``positions[h]``, which must be a subset of what head ``h`` stores."""
        key_parts, value_parts = [], []
        start = 0
        for old, new in zip(self.positions, positions):
            rows = torch.searchsorted(old, new) + start
            key_parts.append(self.keys[rows])
            value_parts.append(self.values[rows])
            start += old.numel()
        self._pack(key_parts, value_parts)
        self.positions = positions

    def _pack(self, key_parts: list[torch.Tensor], value_parts: list[torch.Tensor]) -> None:
        self.keys = torch.cat(key_parts, dim=0)
        self.values = torch.cat(value_parts, dim=0)
        lens = torch.tensor([p.shape[0] for p in key_parts], dtype=torch.long)
        self.head_lens = lens
        self.row_head = torch.repeat_interleave(torch.arange(len(key_parts)), lens).to(self.keys.device)
        self.prefix_bias = None
        self.cu_seqlens = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(self.keys.device, torch.int32)

    def _append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        q = keys.shape[1]
        if self.tail_len + q > self.tail_keys.shape[1]:
            grow = max(self.tail_keys.shape[1] * 2, self.tail_len + q)
            self.tail_keys = _grow(self.tail_keys, grow, self.tail_len)
            self.tail_values = _grow(self.tail_values, grow, self.tail_len)
        self.tail_keys[:, self.tail_len : self.tail_len + q] = keys
        self.tail_values[:, self.tail_len : self.tail_len + q] = values
        self.tail_len += q

    # -- attention ----------------------------------------------------------------------------------------
    def attend(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention output for this layer's call, shape (1, q, Hq, d)."""
        if self.full_keys is not None:  # prefill: full attention, then compress this layer
            out = full_prefill_attention(query, self.full_keys[None], self.full_values[None], scaling)
            self.parent.compress_layer(self.layer_idx, query[0], scaling)
            return out
        tail_k = self.tail_keys[:, : self.tail_len]
        tail_v = self.tail_values[:, : self.tail_len]
        q = query[0]
        if query.shape[2] == 1 and flash_available(query.device):
            out = flash_packed_attention(
                q, self.keys, self.values, self.cu_seqlens, int(self.head_lens.max()), tail_k, tail_v, scaling
            )
        else:
            if self.prefix_bias is None:
                self.prefix_bias = head_bias(self.row_head, q.shape[0], len(self.positions))
            out = packed_attention(
                q, self.keys, self.values, self.row_head, tail_k, tail_v, scaling, self.prefix_bias
            )
        return out.transpose(0, 1).unsqueeze(0)


def _grow(buffer: torch.Tensor, size: int, used: int) -> torch.Tensor:
    new = buffer.new_empty((buffer.shape[0], size, buffer.shape[2]))
    new[:, :used] = buffer[:, :used]
    return new


class CompressedCache(Cache):
    """Cache that compresses each layer right after its prefill, following a :class:`CompressionMethod`.

    Parameters
    ----------
    method : CompressionMethod
        Scorer, layer allocator and head allocator, window and budget.
    num_layers : int
        Decoder layers of the model.
    reserve : int
        Decode entries preallocated per head (usually ``max_new_tokens``).
    """

    def __init__(self, method: CompressionMethod, num_layers: int, reserve: int = 64) -> None:
        layers = []
        super().__init__(layers=layers)
        self.layers.extend(CompressedLayer(self, i) for i in range(num_layers))
        self.method = method
        self.num_layers = num_layers
        self.reserve = reserve
        self.stats: list[float | None] = []
        self.layer_budgets: list[int] = []  # current non-window budget of each compressed layer
        self.prompt_len = 0
        self.compressed = False

    # Called by CompressedLayer.attend after the layer's full prefill attention.
    @torch.no_grad()
    def compress_layer(self, layer_idx: int, query: torch.Tensor, scaling: float) -> None:
        layer = self.layers[layer_idx]
        keys = layer.full_keys
        n = keys.shape[1]
        method = self.method
        window = method.window
        self.prompt_len = n
        device = keys.device
        if n <= method.budget:  # nothing to evict: keep the whole prompt
            layer.store([torch.arange(n, device=device)] * keys.shape[0], self.reserve)
            return
        self.compressed = True
        prefix = n - window
        result = method.scorer(query[:, -window:], keys, layer.full_values, window, scaling)
        layer.scores = result.scores.float()
        layer.order = torch.sort(layer.scores, dim=-1, descending=True, stable=True).indices
        self.stats.append(result.stat)
        budgets = method.layer_allocator.allocate(
            self.stats, [prefix] * len(self.stats), self.num_layers, method.budget - window
        )
        self.layer_budgets.append(budgets[-1])
        window_pos = torch.arange(prefix, n, device=device)
        caps = method.head_allocator.caps(result.scores, budgets[-1], method.budget)
        layer.prefix_kept = caps
        layer.store(_positions(layer.order, caps, window_pos), self.reserve)
        for j in range(layer_idx):  # earlier layers only ever shrink (online allocation)
            if budgets[j] < self.layer_budgets[j]:
                self._shrink(j, budgets[j], window_pos)

    def _shrink(self, j: int, budget: int, window_pos: torch.Tensor) -> None:
        earlier = self.layers[j]
        caps = torch.minimum(
            self.method.head_allocator.caps(earlier.scores, budget, self.method.budget), earlier.prefix_kept
        )
        self.layer_budgets[j] = budget
        if torch.equal(caps, earlier.prefix_kept):
            return
        earlier.prefix_kept = caps
        earlier.shrink(_positions(earlier.order, caps, window_pos))

    # -- reporting ----------------------------------------------------------------------------------------
    def kept_per_head(self) -> list[list[int]]:
        """Stored prompt entries per layer and KV head (window included, decode tail excluded)."""
        return [layer.head_lens.tolist() for layer in self.layers]

    def prompt_bytes(self) -> int:
        """Bytes held by the stored prompt entries (keys and values), measured from the tensors."""
        total = 0
        for layer in self.layers:
            for tensor in (layer.keys, layer.values):
                if tensor is not None:
                    total += tensor.untyped_storage().nbytes()
        return total

    def report(self) -> dict[str, Any]:
        kept = self.kept_per_head()
        entries = sum(sum(h) for h in kept)
        d = self.layers[0].keys.shape[-1] if self.layers[0].keys is not None else 0
        itemsize = self.layers[0].keys.element_size() if self.layers[0].keys is not None else 0
        return {
            "kept_per_head": kept,
            "kept_entries": entries,
            "cache_bytes": self.prompt_bytes(),
            "entry_bytes": 2 * d * itemsize,
            "compressed": self.compressed,
        }


def _positions(order: torch.Tensor, caps: torch.Tensor, window_pos: torch.Tensor) -> list[torch.Tensor]:
    """Per head: the sorted positions of its top-``cap`` prefix entries, then the window."""
    return [
        torch.cat([torch.sort(order[h, : int(c)]).values, window_pos]) for h, c in enumerate(caps.tolist())
    ]
