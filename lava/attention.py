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
_registered = False


def packed_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    row_head: torch.Tensor,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    scaling: float,
    prefix_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact attention of new queries over variable-length per-head caches (CPU / PyTorch path).

    Parameters
    ----------
    query : Tensor, shape (Hq, q, d)
        Queries of the ``q`` new tokens (post-RoPE).
    keys, values : Tensor, shape (N, d)
        Compressed prompt entries of all KV heads, concatenated head by head.
    row_head : Tensor, shape (N,), int64
        KV head of each packed row.
    tail_keys, tail_values : Tensor, shape (Hkv, T, d)
        Entries appended after compression, the ``q`` new ones last; every head has ``T`` of them.
    scaling : float
    prefix_bias : Tensor, shape (N, Hq), optional
        For ``q == 1``: 0 where row and query head share a KV head, -inf elsewhere
        (:func:`head_bias`). Precomputed once per layer, it saves the masking work of every step.

    Returns
    -------
    Tensor, shape (Hq, q, d)

    Notes
    -----
    One matmul scores every packed row against every query head, and a static mask keeps the
    pairs of the same KV head. This spends ``Hkv`` times the necessary FLOPs on the prompt part but
    no Python loop over heads, which is faster for the small head counts that run on CPUs.
    """
    hq, q, d = query.shape
    hkv, t, _ = tail_keys.shape
    group = hq // hkv
    dtype = torch.float32
    cols = query.reshape(hq * q, d).to(dtype)  # column c = (query head c // q, token c % q)
    if q == 1 and prefix_bias is not None:
        prefix_logits = torch.addmm(prefix_bias, keys.to(dtype), cols.T, alpha=scaling)  # (N, Hq)
    else:
        col_head = torch.arange(hq, device=query.device).repeat_interleave(q) // group
        prefix_logits = (keys.to(dtype) @ cols.T) * scaling  # (N, Hq*q)
        prefix_logits = prefix_logits.masked_fill(row_head[:, None] != col_head[None, :], float("-inf"))
    qh = query.reshape(hkv, group * q, d).to(dtype)
    tail_logits = torch.matmul(qh, tail_keys.to(dtype).transpose(1, 2)) * scaling  # (Hkv, g*q, T)
    if q > 1:  # causal among the new tokens: token i sees tail entries < T - q + i + 1
        token = torch.arange(q, device=query.device).repeat(group)
        limit = t - q + token + 1
        tail_logits = tail_logits.masked_fill(
            torch.arange(t, device=query.device)[None, None, :] >= limit[None, :, None], float("-inf")
        )
    tail_logits = tail_logits.reshape(hq * q, t).T  # (T, Hq*q)
    probs = torch.softmax(torch.cat([prefix_logits, tail_logits], dim=0), dim=0)
    n = keys.shape[0]
    out = probs[:n].T @ values.to(dtype)  # (Hq*q, d): masked rows have zero weight
    tail_probs = probs[n:].T.reshape(hkv, group * q, t)
    out = out + torch.matmul(tail_probs, tail_values.to(dtype)).reshape(hq * q, d)
    return out.reshape(hq, q, d).to(query.dtype)


def head_bias(row_head: torch.Tensor, num_query_heads: int, num_kv_heads: int) -> torch.Tensor:
    """(N, Hq) additive mask: 0 where packed row and query head belong to the same KV head, else -inf."""
    col_head = torch.arange(num_query_heads, device=row_head.device) // (num_query_heads // num_kv_heads)
    bias = torch.zeros(row_head.shape[0], num_query_heads, device=row_head.device)
    return bias.masked_fill_(row_head[:, None] != col_head[None, :], float("-inf"))


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
    """transformers attention function: (B, Hq, q, d) inputs -> (B, q, Hq, d) output."""
    layer = getattr(key, "_lava_layer", None)
    if layer is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    scale = scaling if scaling is not None else module.scaling
    return layer.attend(query, scale), None


def register() -> None:
    """Register ``"lava"`` with transformers' attention and mask interfaces (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, lava_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    _registered = True


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
