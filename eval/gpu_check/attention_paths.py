"""Every decode attention path the machine has, against a dense float64 reference.

A case is one decode step of one layer over a per-head variable-length cache laid out as
:class:`lava.cache.CompressedCache` lays it out: the kept prompt rows head after head, then the
decode tail token after token (row ``N + t * Hkv + h`` is step ``t`` of KV head ``h``). Paths:

``masked-matmul``  the library's CPU/PyTorch path (:func:`lava.attention.packed_attention`, one
                   matmul over all rows with the :func:`lava.attention.decode_bias` head mask)
``flash-varlen``   the library's CUDA path (:func:`lava.attention.flash_packed_attention`):
                   flash-attn varlen over the prompt rows, merged with the tail by log-sum-exp;
                   only where flash-attn imports
``torch-varlen``   PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` over each head's rows
                   gathered into one sequence (prompt then tail); CUDA, half precision
``sdpa-padded``    the library's CUDA path without flash-attn (:class:`lava.padded.PaddedStore`): one
                   SDPA call over the heads padded to the longest, an additive mask

The reference loops over query heads in float64 on the CPU, from the same (dtype-rounded) inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lava.attention import decode_bias, flash_available, flash_packed_attention, packed_attention

# Pass criteria. fp32: max |out - ref| <= 1e-5 (fp32 arithmetic lands near 1e-6 here). bf16: the
# inputs are rounded before the reference sees them, so the error is each path's own bf16 rounding;
# the criterion is the relative error ||out - ref|| / ||ref|| <= 2e-2. Measured on a CPU: SDPA ~2e-3;
# the masked matmul ~1e-2 at the 8B shape, because it rounds the logits to bf16 before the softmax
# (2^-9 relative of logits up to ~10).
TOLERANCE = {torch.float32: ("max_abs_err", 1e-5), torch.bfloat16: ("rel_err", 2e-2)}


@dataclass
class Case:
    """One decode step over a packed per-head cache (see the module docstring for the layout)."""

    name: str
    query: torch.Tensor  # (Hq, 1, d)
    keys: torch.Tensor  # (L, d)
    values: torch.Tensor  # (L, d)
    row_head: torch.Tensor  # (L,) KV head of each row
    row_step: torch.Tensor  # (L,) decode step, -1 for prompt rows
    head_lens: torch.Tensor  # (Hkv,) prompt rows per head
    tail: int
    scale: float

    @property
    def num_kv_heads(self) -> int:
        return self.head_lens.shape[0]

    @property
    def num_prompt_rows(self) -> int:
        return int(self.head_lens.sum())


def make_case(
    name: str,
    hq: int,
    hkv: int,
    d: int,
    mean_len: int,
    tail: int,
    dtype: torch.dtype,
    device: str,
    seed: int = 0,
) -> Case:
    """Random case: head lengths uniform in [mean/2, 3 mean/2], N(0, 1) keys/values, queries x 2."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(mean_len // 2, mean_len * 3 // 2 + 1, (hkv,), generator=gen)
    n = int(lens.sum())
    rows = n + hkv * tail
    keys = torch.randn(rows, d, generator=gen)
    values = torch.randn(rows, d, generator=gen)
    query = 2.0 * torch.randn(hq, 1, d, generator=gen)  # peakier softmax than unit queries
    row_head = torch.cat([torch.repeat_interleave(torch.arange(hkv), lens), torch.arange(hkv).repeat(tail)])
    row_step = torch.cat([torch.full((n,), -1), torch.arange(tail).repeat_interleave(hkv)])
    return Case(
        name,
        query.to(device, dtype),
        keys.to(device, dtype),
        values.to(device, dtype),
        row_head.to(device),
        row_step.to(device),
        lens.to(device),
        tail,
        d**-0.5,
    )


def reference(case: Case) -> torch.Tensor:
    """(Hq, 1, d) float64 attention of each query head over its KV head's rows, by a loop."""
    q, k, v = case.query.double().cpu(), case.keys.double().cpu(), case.values.double().cpu()
    row_head = case.row_head.cpu()
    hq = q.shape[0]
    group = hq // case.num_kv_heads
    out = torch.empty_like(q)
    for h in range(hq):
        rows = row_head == h // group
        logits = (q[h, 0] @ k[rows].T) * case.scale
        out[h, 0] = torch.softmax(logits, dim=-1) @ v[rows]
    return out


# -- the paths: each returns a zero-argument callable (setup outside, the call itself timed) ----------------


def masked_matmul(case: Case) -> Callable[[], torch.Tensor]:
    hq = case.query.shape[0]
    bias = decode_bias(case.row_head, case.row_step, hq, case.num_kv_heads, 1, case.tail, case.query.dtype)
    return lambda: packed_attention(case.query, case.keys, case.values, bias, case.scale)


def flash_varlen(case: Case) -> Callable[[], torch.Tensor]:
    n, hkv = case.num_prompt_rows, case.num_kv_heads
    cu = F.pad(case.head_lens.cumsum(0), (1, 0)).to(torch.int32)
    tail_k = case.keys[n:].view(case.tail, hkv, -1).transpose(0, 1)
    tail_v = case.values[n:].view(case.tail, hkv, -1).transpose(0, 1)
    max_len = int(case.head_lens.max())
    return lambda: flash_packed_attention(
        case.query, case.keys[:n], case.values[:n], cu, max_len, tail_k, tail_v, case.scale
    )


def _per_head_order(case: Case) -> torch.Tensor:
    """Row indices regrouped head after head, each head's prompt rows then its tail rows."""
    return torch.sort(case.row_head, stable=True).indices


def torch_varlen(case: Case) -> Callable[[], torch.Tensor]:
    """``varlen_attn`` with one sequence per KV head whose single query token carries the group's heads.

    Older releases of the (experimental) API take neither ``scale`` nor ``enable_gqa``: the query is
    then pre-scaled and the KV head expanded to the group.
    """
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    hq, _, d = case.query.shape
    hkv = case.num_kv_heads
    group = hq // hkv
    params = inspect.signature(varlen_attn).parameters
    order = _per_head_order(case)
    keys = case.keys[order].unsqueeze(1)  # (L, 1, d): one KV head per sequence
    values = case.values[order].unsqueeze(1)
    kwargs = {}
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    else:
        keys, values = keys.expand(-1, group, -1).contiguous(), values.expand(-1, group, -1).contiguous()
    query = case.query.reshape(hkv, group, d)  # each sequence: one token carrying its group's heads
    if "scale" in params:
        kwargs["scale"] = case.scale
    else:  # the kernel's default scale is d ** -0.5
        query = query * (case.scale / d**-0.5)
    lens = case.head_lens + case.tail
    cu_k = F.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    cu_q = torch.arange(hkv + 1, device=keys.device, dtype=torch.int32)
    max_k = int(lens.max())
    return lambda: varlen_attn(query, keys, values, cu_q, cu_k, 1, max_k, **kwargs).reshape(hq, 1, d)


def sdpa_padded(case: Case) -> Callable[[], torch.Tensor]:
    """The library's CUDA path (:class:`lava.padded.PaddedStore`): heads padded to the longest, the
    decode tail after the padding, one SDPA call over the whole buffer with an additive mask."""
    from lava.padded import PaddedStore

    hq, _, d = case.query.shape
    hkv, n, tail = case.num_kv_heads, case.num_prompt_rows, case.tail
    width = int(case.head_lens.max())
    lens = case.head_lens.to(case.keys.device)
    heads = case.row_head[:n]
    slot = torch.arange(n, device=heads.device) - (lens.cumsum(0) - lens)[heads]
    buffers = []
    for rows in (case.keys, case.values):
        buffer = rows.new_zeros(1, hkv, width + tail, d)
        buffer[0, heads, slot] = rows[:n]
        buffer[0, :, width:] = rows[n:].view(tail, hkv, d).transpose(0, 1)
        buffers.append(buffer)
    store = PaddedStore(buffers[0], buffers[1], lens[None], width, steps=tail)
    query = case.query[None]  # (1, Hq, 1, d)
    return lambda: store.attend(query, case.scale).reshape(hq, 1, d)


HALF_ONLY = {"flash-varlen", "torch-varlen"}


def available_paths(device: torch.device) -> dict[str, Callable[[Case], Callable[[], torch.Tensor]] | str]:
    """Path name -> builder, or the reason it cannot run on ``device``."""
    paths: dict = {"masked-matmul": masked_matmul, "sdpa-padded": sdpa_padded}
    paths["flash-varlen"] = (
        flash_varlen if flash_available(device) else "flash-attn not importable (or no CUDA)"
    )
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401

        paths["torch-varlen"] = torch_varlen if device.type == "cuda" else "CUDA only"
    except ImportError:
        paths["torch-varlen"] = f"torch {torch.__version__} has no torch.nn.attention.varlen"
    return paths


def time_call(fn: Callable[[], torch.Tensor], device: torch.device, iters: int) -> float:
    """Median microseconds of one call (CUDA events on a GPU, perf_counter on a CPU), after 3 warm-ups."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(stop) * 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
    return sorted(times)[len(times) // 2]


def check_paths(
    shapes: list[tuple[str, int, int, int, int, int]], device: str, dtypes: list[torch.dtype], iters: int
) -> list[dict]:
    """One row per (shape, dtype, path): error against the reference, tolerance, time, or why it did not run.

    ``shapes``: (name, Hq, Hkv, d, mean prompt rows per head, tail steps).
    """
    dev = torch.device(device)
    paths = available_paths(dev)
    rows = []
    for seed, (name, hq, hkv, d, mean_len, tail) in enumerate(shapes):
        for dtype in dtypes:
            case = make_case(name, hq, hkv, d, mean_len, tail, dtype, device, seed)
            ref = reference(case)
            base = {"case": name, "device": device, "dtype": str(dtype).removeprefix("torch."), "hq": hq,
                    "hkv": hkv, "head_dim": d, "rows": case.keys.shape[0], "tail": tail}  # fmt: skip
            for path, builder in paths.items():
                row = {**base, "path": path, "ran": False, "max_abs_err": float("nan"), "rel_err": float("nan"),
                       "criterion": TOLERANCE[dtype][0], "tol": TOLERANCE[dtype][1], "passed": None, "us_per_call": float("nan"), "note": ""}  # fmt: skip
                if isinstance(builder, str):
                    row["note"] = builder
                elif path in HALF_ONLY and dtype == torch.float32:
                    row["note"] = "half-precision kernel: not run in fp32"
                else:
                    try:
                        fn = builder(case)
                        out = fn().double().cpu()
                        row.update(
                            ran=True,
                            max_abs_err=float((out - ref).abs().max()),
                            rel_err=float((out - ref).norm() / ref.norm()),
                            us_per_call=time_call(fn, dev, iters),
                        )
                        metric, tol = TOLERANCE[dtype]
                        row["passed"] = bool(torch.isfinite(out).all()) and row[metric] <= tol
                    except Exception as exc:  # a kernel the machine lacks: reported, not fatal
                        row["note"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                rows.append(row)
    return rows


# SDPA backends timed for the padded layout at several batch sizes: the batched decode of a sweep
# (several caches per call) ran far slower per step than a single cache on an H200 (docs/gpu.md), and
# which backend PyTorch picks for a masked call depends on the shapes.
BACKENDS = {"default": None, "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}


def batched_padded_timings(
    shape: tuple[str, int, int, int, int, int],
    device: str,
    dtype: torch.dtype,
    batches: list[int],
    iters: int,
) -> list[dict]:
    """Microseconds per :meth:`lava.padded.PaddedStore.attend` call for ``batches`` caches of ``shape``
    (heads within 10% of the mean length), with each SDPA backend allowed alone and with PyTorch's
    default choice; timing only (the correctness of the path is :func:`check_paths`' job)."""
    from contextlib import nullcontext
    from functools import partial

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lava.padded import PaddedStore

    name, hq, hkv, d, mean_len, tail = shape
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    for batch in batches:
        lens = (mean_len - torch.randint(0, max(mean_len // 10, 1), (batch, hkv), generator=gen)).to(dev)
        keys = torch.randn(batch, hkv, mean_len + tail, d, generator=gen).to(dev, dtype)
        values = torch.randn(batch, hkv, mean_len + tail, d, generator=gen).to(dev, dtype)
        store = PaddedStore(keys, values, lens, mean_len, steps=tail)
        query = torch.randn(batch, hq, 1, d, generator=gen).to(dev, dtype)
        for label, backend in BACKENDS.items():
            row = {"case": name, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "backend": label,
                   "us_per_call": float("nan"), "note": ""}  # fmt: skip
            context = sdpa_kernel([getattr(SDPBackend, backend)]) if backend else nullcontext()
            try:
                with context:
                    call = partial(store.attend, query, 1.0 / d**0.5)
                    row["us_per_call"] = time_call(call, dev, iters)
            except Exception as exc:  # a backend that cannot take these inputs: reported
                row["note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            rows.append(row)
    return rows
