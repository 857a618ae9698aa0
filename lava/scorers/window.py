"""Window attention scores shared by every scorer: softmax of the last ``window`` queries over the prompt.

Shapes use ``Hq`` query heads, ``Hkv`` KV heads, group size ``g = Hq / Hkv``, prompt length ``n``,
window ``w`` and evictable prefix ``P = n - w``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def window_attention(query_window: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """Attention probabilities of the window queries over all prompt keys, in fp32.

    Parameters
    ----------
    query_window : Tensor, shape (Hq, w, d)
        Post-RoPE queries of the last ``w`` prompt tokens.
    keys : Tensor, shape (Hkv, n, d)
        Post-RoPE keys of the whole prompt.
    scaling : float
        Softmax temperature (``1/sqrt(d)``).

    Returns
    -------
    Tensor, shape (Hq, w, n)
        Rows sum to 1. Inside the window block the mask is causal; prefix keys are all visible.
    """
    hq, w, _ = query_window.shape
    hkv, n, _ = keys.shape
    group = hq // hkv
    q = query_window.float().reshape(hkv, group * w, -1)
    logits = torch.matmul(q, keys.float().transpose(1, 2)).view(hq, w, n) * scaling
    # Window query i sits at position n - w + i and may not see keys after it.
    key_pos = torch.arange(n, device=keys.device)
    query_pos = torch.arange(n - w, n, device=keys.device)
    logits = logits.masked_fill(key_pos[None, :] > query_pos[:, None], float("-inf"))
    return torch.softmax(logits, dim=-1)


def pool_1d(scores: torch.Tensor, kernel: int, mode: str) -> torch.Tensor:
    """Pool along the key axis with stride 1 and padding ``kernel // 2`` (SnapKV smoothing).

    Parameters
    ----------
    scores : Tensor, shape (H, P)
    kernel : int
        Odd window size; 1 disables pooling.
    mode : {"max", "avg"}
        ``avg`` counts zero padding (``count_include_pad=True``, as upstream).
    """
    if kernel <= 1 or scores.shape[-1] == 0:
        return scores
    if mode == "max":
        return F.max_pool1d(scores.unsqueeze(0), kernel, stride=1, padding=kernel // 2).squeeze(0)
    if mode == "avg":
        return F.avg_pool1d(scores.unsqueeze(0), kernel, stride=1, padding=kernel // 2).squeeze(0)
    raise ValueError(f"pooling must be 'max' or 'avg', got {mode!r}")


def group_reduce(scores: torch.Tensor, num_kv_heads: int, mode: str) -> torch.Tensor:
    """Reduce per-query-head scores over each GQA group.

    Parameters
    ----------
    scores : Tensor, shape (Hq, P)
    num_kv_heads : int
    mode : {"mean", "max"}

    Returns
    -------
    Tensor, shape (Hkv, P)
    """
    grouped = scores.reshape(num_kv_heads, scores.shape[0] // num_kv_heads, -1)
    if mode == "mean":
        return grouped.mean(dim=1)
    if mode == "max":
        return grouped.amax(dim=1)
    raise ValueError(f"gqa reduction must be 'mean' or 'max', got {mode!r}")
