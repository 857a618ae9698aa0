"""Accelerator memory of a run: what the weights take, the peak of the sample loop, the device's name.

A run's ``run_meta.json`` records it under ``device_memory`` so a sweep and a single run of the same
samples can be compared (the sweep's memory target is stated above the weights). Only CUDA has
counters for this; on other devices the record is ``None``.
"""

from __future__ import annotations

from typing import Any


def _is_cuda(device: Any) -> bool:
    import torch

    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def mark_weights_loaded(device: Any) -> int | None:
    """Bytes allocated on ``device`` right after the model loaded; starts the peak counter there.

    Resetting the peak makes the run's peak the sample loop's (the weights stay allocated, so it is
    never below them), not a transient of the loading itself. ``None`` off CUDA.
    """
    if not _is_cuda(device):
        return None
    import torch

    torch.cuda.synchronize(device)
    weights = int(torch.cuda.memory_allocated(device))
    torch.cuda.reset_peak_memory_stats(device)
    return weights


def device_memory(device: Any, weights_bytes: int | None) -> dict[str, Any] | None:
    """What ``run_meta.json`` records under ``device_memory``; ``None`` off CUDA.

    Returns
    -------
    dict or None
        ``device_name``; ``weights_bytes`` (allocated once the model loaded); ``peak_bytes``
        (``torch.cuda.max_memory_allocated`` since then, weights included);
        ``peak_above_weights_bytes`` (their difference).
    """
    if weights_bytes is None or not _is_cuda(device):
        return None
    import torch

    torch.cuda.synchronize(device)
    peak = int(torch.cuda.max_memory_allocated(device))
    return {
        "device_name": torch.cuda.get_device_name(device),
        "weights_bytes": weights_bytes,
        "peak_bytes": peak,
        "peak_above_weights_bytes": peak - weights_bytes,
    }
