"""Attention of many small query blocks, each over its own variable-length set of stored rows.

A teacher-forced continuation through a batch of per-head caches (``lava.batch``), and the fidelity
benchmark's layer-wise attention over several compressions of one prompt, both come down to the same
shape of work: for every (cache, KV head) pair, the ``g * q`` query rows of the head's group attend
over that head's kept prompt rows, then over the ``q``-or-more new tokens, causally. Head lengths
differ a lot (dynamic head budgets keep 10 rows in one head and 1000 in another), so padding every
head to the longest wastes most of the work, while one call per head costs a kernel launch each.
:func:`varlen_attention` sorts the pairs by length and pads only within groups of similar length
(:func:`similar_lengths`): a few batched matmuls per group, with a bounded share of padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def similar_lengths(lengths: Sequence[int], slack: float = 1.5) -> list[list[int]]:
    """Indices grouped so that in each group the longest is at most ``slack`` times the shortest.

    Padding a group to its longest member then wastes at most ``slack - 1`` of the work. Zero lengths
    group with lengths up to ``slack``.
    """
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        if groups and lengths[i] <= slack * max(lengths[groups[-1][0]], 1):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def varlen_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    lengths: torch.Tensor,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    tokens: int,
    scaling: float,
    slack: float = 1.5,
) -> torch.Tensor:
    """Exact attention of ``S`` query blocks over their own rows plus their own causal tail.

    Parameters
    ----------
    query : Tensor, shape (S, g * q, d)
        Block ``s``'s query rows: row ``j * q + i`` is query head ``j`` of the group sharing the
        block's KV head, new token ``i`` of ``q``.
    keys, values : Tensor, shape (N, d)
        The stored rows of all blocks, block after block (block ``s`` owns ``lengths[s]`` rows).
    lengths : Tensor, shape (S,), int64, best on the CPU
        Stored rows per block (0 allowed: that block sees only its tail). Read on the host once per
        call: the grouping and the padded widths are decided there.
    tail_keys, tail_values : Tensor, shape (S, T, d)
        Per block, the new tokens' keys and values, ``T >= q``; token ``i`` sees tail steps
        ``t <= T - q + i`` (causal), and every stored row.
    tokens : int
        ``q``, the new tokens whose queries are given.
    scaling : float
        Softmax scale.
    slack : float
        Padding bound of :func:`similar_lengths`.

    Returns
    -------
    Tensor, shape (S, r, d)
        In the logits dtype (fp32 for half-precision inputs, else the input dtype), which the
        softmax also runs in.
    """
    from lava.attention import logits_dtype

    blocks, rows, d = query.shape
    steps, q = tail_keys.shape[1], tokens
    if rows % q or steps < q:
        raise ValueError(f"{rows} query rows, {steps} tail steps: need g * {q} rows and at least {q} steps")
    dtype = logits_dtype(query.dtype)
    device = query.device
    token = torch.arange(q, device=device).repeat(rows // q)
    future = torch.arange(steps, device=device)[None, :] > (steps - q + token)[:, None]  # (r, T)
    pool_k, pool_v = keys.to(dtype), values.to(dtype)
    host_lengths = lengths.tolist()
    lengths = lengths.to(device)
    starts = torch.cumsum(lengths, 0) - lengths
    out = torch.empty((blocks, rows, d), dtype=dtype, device=device)
    for group in similar_lengths(host_lengths, slack):
        index = torch.tensor(group, device=device)
        width = max(host_lengths[i] for i in group)
        slots = torch.arange(width, device=device)
        pad = slots[None, :] >= lengths[index][:, None]  # (G, W)
        # Padding gathers row 0: finite, and masked out below.
        gather = (starts[index][:, None] + slots[None, :]).masked_fill(pad, 0)
        k = torch.cat([pool_k[gather], tail_keys[index].to(dtype)], dim=1)  # (G, W + T, d)
        v = torch.cat([pool_v[gather], tail_values[index].to(dtype)], dim=1)
        logits = torch.bmm(query[index].to(dtype), k.transpose(1, 2)) * scaling  # (G, r, W + T)
        logits[:, :, :width].masked_fill_(pad[:, None, :], float("-inf"))
        logits[:, :, width:].masked_fill_(future, float("-inf"))
        out[index] = torch.bmm(torch.softmax(logits, dim=-1), v)
    return out
