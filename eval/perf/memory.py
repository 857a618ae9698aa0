"""Memory measurement: the process RSS sampled in a thread, and the KV bytes of any cache."""

from __future__ import annotations

import ctypes
import gc
import threading
from typing import Any


class RssSampler:
    """Samples the process RSS in a background thread; ``peak`` is the maximum seen (bytes)."""

    def __init__(self, interval: float) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.baseline = self._proc.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss
            if rss > self.peak:
                self.peak = rss
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS baselines are comparable."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def kv_size(cache: Any, prompt_len: int) -> dict[str, Any]:
    """Bytes and entries of the prompt keys and values a cache stores, for any cache.

    A compressing cache reports its own (``report()``: ``cache_bytes``, ``kept_entries``, ``kept_per_head``,
    ...); for a plain cache (``DynamicCache``: ``(B, Hkv, T, d)`` key and value tensors per layer), the
    first ``prompt_len`` positions of every layer, decode steps excluded.
    """
    report = getattr(cache, "report", None)
    if callable(report):
        return report()
    total = entries = 0
    for layer in getattr(cache, "layers", []):
        keys = getattr(layer, "keys", None)
        for tensor in (keys, getattr(layer, "values", None)):
            if tensor is not None and tensor.dim() == 4:
                total += tensor[:, :, :prompt_len].numel() * tensor.element_size()
        if keys is not None and keys.dim() == 4:
            entries += keys.shape[0] * keys.shape[1] * min(prompt_len, keys.shape[2])
    return {"cache_bytes": total, "kept_entries": entries, "compressed": False}
