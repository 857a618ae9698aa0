"""Attention over the compressed cache, registered with transformers as the ``"lava"`` implementation.

The cache routes each layer's attention call here by tagging the key tensor its ``update`` returns
(``key._lava_layer``): prefill attention is full (SDPA, causal) and is followed by that layer's
compression; later calls attend over the per-head caches. Calls that do not come from a
:class:`~lava.cache.CompressedCache` (e.g. a plain ``DynamicCache``) fall through to SDPA, so a model
switched to ``"lava"`` still runs uncompressed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

ATTN_NAME = "lava"
_registered: set[str] = set()  # attention implementation names registered with transformers


def packed_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Exact attention of new queries over variable-length per-head caches (CPU / PyTorch path).

    Parameters
    ----------
    query : Tensor, shape (Hq, q, d)
        Queries of the ``q`` new tokens (post-RoPE).
    keys, values : Tensor, shape (L, d)
        The stored entries of all KV heads as rows, in any order (the cache keeps the prompt head
        after head, then the decode steps token after token).
    bias : Tensor, shape (Hq * q, L)
        Additive mask (:func:`decode_bias`): 0 where query row ``h * q + i`` may see a row, -inf elsewhere.
    scaling : float

    Returns
    -------
    Tensor, shape (Hq, q, d)

    Notes
    -----
    All query rows of all heads are scored against all stored rows in one matmul: ``Hkv`` times
    the necessary FLOPs, but at decode sizes (a few thousand rows) the cost of each CPU kernel launch
    dominates, and three launches (addmm, softmax, mm) replace a loop over heads or a gather into a
    padded tensor. Measured on SmolLM2 at 4k tokens this also beat a single masked SDPA call
    (docs/perf.md).
    """
    hq, q, d = query.shape
    dtype = logits_dtype(query.dtype)
    logits = torch.addmm(
        bias.to(dtype), query.reshape(hq * q, d).to(dtype), keys.T.to(dtype), alpha=scaling
    )  # (Hq*q, L)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(values.dtype)
    return torch.mm(probs, values).reshape(hq, q, d)


def logits_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the attention logits: fp32 for half-precision inputs (rounding logits to bf16 before the
    softmax costs about 5x the error of SDPA, which accumulates in fp32), else the input dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def batched_packed_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scaling: float
) -> torch.Tensor:
    """:func:`packed_attention` of one new token for a batch of caches padded to the same row count.

    Parameters
    ----------
    query : Tensor, shape (B, Hq, d)
    keys, values : Tensor, shape (B, L, d)
        Row ``b``'s stored entries of all KV heads (any order), padded with finite rows.
    bias : Tensor, shape (B, Hq, L)
        0 where query head ``h`` of row ``b`` may see a row, -inf elsewhere (padding included).
    scaling : float

    Returns
    -------
    Tensor, shape (B, Hq, d)

    Notes
    -----
    Three kernels (baddbmm, softmax, bmm) for the whole batch: on CPU a decode step of many small
    caches is dominated by per-call overhead, so one call over the padded batch beats one
    :func:`packed_attention` per member although it also scores the padding.
    """
    dtype = logits_dtype(query.dtype)
    logits = torch.baddbmm(bias.to(dtype), query.to(dtype), keys.transpose(1, 2).to(dtype), alpha=scaling)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(values.dtype)
    return torch.bmm(probs, values)


def decode_bias(
    row_head: torch.Tensor,
    row_step: torch.Tensor,
    num_query_heads: int,
    num_kv_heads: int,
    q: int,
    steps: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(Hq * q, L) additive mask for :func:`packed_attention`.

    Query row ``h * q + i`` (query head ``h``, new token ``i`` of ``q``) sees row ``r`` when ``r`` belongs
    to KV head ``h // (Hq / Hkv)`` and, for decode rows, when its step is at most ``steps - q + i``
    (causal among the new tokens; ``steps`` counts the decode steps stored, new ones included).

    Parameters
    ----------
    row_head : Tensor, shape (L,), int64
        KV head of each row.
    row_step : Tensor, shape (L,), int64
        Decode step of each row, ``-1`` for prompt rows (always visible).
    """
    device = row_head.device
    col_head = torch.arange(num_query_heads, device=device).repeat_interleave(q) // (
        num_query_heads // num_kv_heads
    )
    token = torch.arange(q, device=device).repeat(num_query_heads)
    visible = (row_head[None, :] == col_head[:, None]) & (row_step[None, :] <= (steps - q + token)[:, None])
    bias = torch.zeros(visible.shape, dtype=dtype, device=device)
    return bias.masked_fill_(~visible, float("-inf"))


def flash_packed_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_len: int,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """CUDA path for one new token: ``flash_attn_varlen_func`` over the packed prompt, merged with the tail.

    Each KV head is one varlen "sequence" whose single query row carries the ``g`` query heads of
    its group (MQA inside the sequence), as in Ada-KV/LAVa. The two partial softmaxes (packed prompt,
    dense tail) are merged through their log-sum-exp.
    """
    from flash_attn import flash_attn_varlen_func

    hq, q, d = query.shape
    hkv, t, _ = tail_keys.shape
    group = hq // hkv
    qv = query.reshape(hkv, group, d)  # q == 1
    cu_q = torch.arange(hkv + 1, device=query.device, dtype=torch.int32)
    out_p, lse_p, _ = flash_attn_varlen_func(
        qv,
        keys.unsqueeze(1),
        values.unsqueeze(1),
        cu_q,
        cu_seqlens,
        1,
        max_len,
        softmax_scale=scaling,
        causal=False,
        return_attn_probs=True,
    )  # out (Hkv, g, d); softmax_lse (nheads, total_q) = (g, Hkv) since flash-attn 2.4, (Hkv, g, 1) before
    lse_p = lse_p[:, :, 0] if lse_p.dim() == 3 else lse_p.T
    logits_t = torch.matmul(qv.float(), tail_keys.float().transpose(1, 2)) * scaling  # (Hkv, g, T)
    lse_t = torch.logsumexp(logits_t, dim=-1)
    out_t = torch.matmul(torch.softmax(logits_t, dim=-1), tail_values.float())
    lse = torch.logaddexp(lse_p.float(), lse_t)
    out = (
        out_p.float() * torch.exp(lse_p.float() - lse)[..., None] + out_t * torch.exp(lse_t - lse)[..., None]
    )
    return out.reshape(hq, 1, d).to(query.dtype)


# Decode attention kernels. ``decode_kernel`` is the one place that chooses per device.
MASKED_MATMUL = "masked-matmul"  # packed rows, one (Hq, rows) matmul with a head mask: CPUs
SDPA_PADDED = "sdpa-padded"  # each KV head's rows padded to the layer's longest head, one SDPA: CUDA
FLASH_VARLEN = "flash-varlen"  # packed rows through flash-attn's varlen kernel: CUDA with flash-attn
DECODE_KERNELS = (MASKED_MATMUL, SDPA_PADDED, FLASH_VARLEN)
# A layer whose heads, padded to its longest, would need more than this fraction of extra rows stays
# packed (memory first: dynamic head budgets can keep 6x more rows in one head than in another).
PAD_SLACK = 0.25
_forced_kernel: str | None = None


def decode_kernel(device: torch.device) -> str:
    """The decode attention kernel for a cache on ``device``.

    CPUs: the masked matmul (three kernels; launch overhead dominates there, docs/perf.md). CUDA:
    flash-attn's varlen kernel where it imports, else one SDPA over heads padded to the longest
    (measured at the 8B shape on an H200: 64 us against 175 us for the masked matmul, which converts
    every key to fp32 and scores every query head against every KV head's rows).
    """
    if _forced_kernel is not None:
        return _forced_kernel
    if device.type == "cuda":
        return FLASH_VARLEN if flash_available(device) else SDPA_PADDED
    return MASKED_MATMUL


class force_decode_kernel:
    """Context manager that makes :func:`decode_kernel` answer ``name`` on every device (tests, benchmarks)."""

    def __init__(self, name: str | None) -> None:
        if name is not None and name not in DECODE_KERNELS:
            raise ValueError(f"decode kernel must be one of {DECODE_KERNELS}, got {name!r}")
        self.name = name

    def __enter__(self) -> None:
        global _forced_kernel
        self.previous, _forced_kernel = _forced_kernel, self.name

    def __exit__(self, *exc: object) -> None:
        global _forced_kernel
        _forced_kernel = self.previous


def padded_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention of new queries over per-head caches padded to one width: one SDPA call.

    The ``g = Hq / Hkv`` query heads of a KV head are passed as ``g`` query rows of that head, so no
    key is repeated and no GQA support is needed from the kernel.

    Parameters
    ----------
    query : Tensor, shape (B, Hq, q, d)
    keys, values : Tensor, shape (B, Hkv, S, d)
        Each head's rows, padding included (finite: 0 * nan = nan).
    bias : Tensor, shape (B, Hkv, 1 or g * q, S)
        Additive mask in the query's dtype: 0 for a visible row, -inf for padding (and, for several new
        tokens, for later steps). Row ``j * q + i`` of a head is its query head ``j``, new token ``i``.
    scaling : float

    Returns
    -------
    Tensor, shape (B, Hq, q, d)
    """
    batch, hq, q, d = query.shape
    hkv = keys.shape[1]
    grouped = query.reshape(batch, hkv, (hq // hkv) * q, d)
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=bias, scale=scaling)
    return out.reshape(batch, hq, q, d)


def padded_bias(
    lengths: torch.Tensor, width: int, prefix: int, steps: int, dtype: torch.dtype
) -> torch.Tensor:
    """(..., S) additive mask of padded per-head rows: head rows ``[0, lengths)`` and the stored decode
    rows ``[prefix, prefix + steps)`` visible (0); the padding and the room not yet written -inf.

    Parameters
    ----------
    lengths : Tensor, shape (...,), int
        Stored prompt rows of each head (on the cache's device).
    width : int
        ``S``: the padded prompt width ``prefix`` plus the room for decode steps.
    steps : int
        Decode steps stored.
    """
    cols = torch.arange(width, device=lengths.device)
    visible = (cols < lengths[..., None]) | ((cols >= prefix) & (cols < prefix + steps))
    return torch.zeros(visible.shape, dtype=dtype, device=lengths.device).masked_fill_(
        ~visible, float("-inf")
    )


def causal_tail_bias(prompt_bias: torch.Tensor, group: int, q: int, tail: int) -> torch.Tensor:
    """(..., g * q, prefix + tail) mask for ``q`` new tokens over padded rows: the prompt columns of
    ``prompt_bias`` (..., prefix) for every query row, decode step ``t`` visible to new token ``i`` when
    ``t <= tail - q + i`` (causal among the new tokens)."""
    token = torch.arange(q, device=prompt_bias.device).repeat(group)  # row j * q + i -> i
    steps = torch.arange(tail, device=prompt_bias.device)
    future = steps[None, :] > (tail - q + token)[:, None]  # (g * q, T)
    tail_bias = torch.zeros(future.shape, dtype=prompt_bias.dtype, device=prompt_bias.device)
    tail_bias.masked_fill_(future, float("-inf"))
    lead = prompt_bias.shape[:-1]
    rows = prompt_bias[..., None, :].expand(*lead, group * q, prompt_bias.shape[-1])
    return torch.cat([rows, tail_bias.expand(*lead, group * q, tail)], dim=-1)


def flash_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def lava_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: (B, Hq, q, d) inputs -> (B, q, Hq, d) output.

    A call whose key tensor is tagged by a lava cache layer attends over that layer; any other call
    (a ``DynamicCache``, a hybrid model's sliding layers) is SDPA under the model's own mask. A tagged
    layer is full attention with plain scaled logits: a sliding window or logit soft-capping asked
    for it means the layer kinds were mistaken, and raises rather than attending over the wrong keys.
    (Gemma 3 asks neither of its global layers: its scaling is ``query_pre_attn_scalar ** -0.5``,
    passed here as ``scaling``, and it has no soft-capping.)
    """
    layer = getattr(key, "_lava_layer", None)
    if layer is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    for option in ("sliding_window", "softcap"):
        if kwargs.get(option) is not None:
            raise NotImplementedError(
                f"{type(module).__name__} asks for {option}={kwargs[option]} on a compressed layer; the "
                "compressed cache attends over full-attention layers without soft-capping"
            )
    scale = scaling if scaling is not None else module.scaling
    return layer.attend(query, scale), None


def register_attention(name: str, forward: Any) -> None:
    """Register ``forward`` as attention implementation ``name`` (with SDPA's mask), once per name."""
    if name in _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    _registered.add(name)


def register() -> None:
    """Register ``"lava"`` with transformers' attention and mask interfaces (idempotent)."""
    register_attention(ATTN_NAME, lava_attention_forward)


def enable(model: Any) -> Any:
    """Switch ``model`` to the ``"lava"`` attention implementation (needed by :class:`CompressedCache`)."""
    register()
    if getattr(model.config, "_attn_implementation", None) != ATTN_NAME:
        model.set_attn_implementation(ATTN_NAME)
    return model


def full_prefill_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Causal SDPA over the whole prompt. Shapes (1, Hq, n, d), (1, Hkv, n, d) -> (1, n, Hq, d)."""
    causal = query.shape[2] > 1
    out = F.scaled_dot_product_attention(
        query, keys, values, is_causal=causal, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous()
