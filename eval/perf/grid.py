"""The perf grid: which (method, attention, budget) runs at each prompt length, and their medians and ratios."""

from __future__ import annotations

import statistics
from typing import Any

REFERENCE = ("full", "sdpa")  # (method, attention implementation) every ratio is measured against
# The physical limit of a budget: the full cache (sdpa) on the prompt's first `budget` tokens, i.e. a cache
# of the same size with nothing to score, evict or mask. A compressing method cannot decode faster.
CEILING = "full@budget"


def resolve_budget(spec: str, length: int) -> int:
    """``"128"`` -> 128; ``"10pct"`` -> 10 % of the prompt length (rounded)."""
    if spec.endswith("pct"):
        return max(1, round(float(spec[:-3]) / 100.0 * length))
    return int(spec)


def configurations(
    methods: list[str], budgets: list[str], length: int, ceiling: bool = True
) -> list[tuple[str, str, str, int | None]]:
    """(method, attn, budget_spec, budget) of one prompt length; the sdpa reference first.

    With ``ceiling``, each budget shorter than the prompt also gets a ``full@budget`` run (the full
    cache on the first ``budget`` tokens), when at least one compressing method runs.
    """
    configs: list[tuple[str, str, str, int | None]] = [("full", "sdpa", "", None)]
    if REFERENCE[0] in methods:
        configs.append(("full", "lava", "", None))
    resolved: dict[int, str] = {}
    for spec in budgets:
        resolved.setdefault(resolve_budget(spec, length), spec)  # e.g. 10pct of 1280 == 128: once
    compressing = [name for name in methods if name != REFERENCE[0]]
    if ceiling and compressing:
        configs += [(CEILING, "sdpa", spec, b) for b, spec in resolved.items() if b < length]
    configs += [(name, "lava", spec, b) for name in compressing for b, spec in resolved.items()]
    return configs


MEDIAN_KEYS = [
    "prefill_s",
    "compress_s",
    "decode_s",
    "decode_tok_s",
    "cache_bytes",
    "kept_entries",
    "rss_peak_mb",
    "rss_delta_mb",
    "prefill_cpu_s",
    "compress_cpu_s",
    "decode_cpu_s",
]


def aggregate(raw: list[dict], threads: int, new_tokens: int) -> list[dict]:
    """Medians per configuration, ratios against the reference of the same length."""
    groups: dict[tuple, list[dict]] = {}
    for row in raw:
        groups.setdefault(
            (row["length"], row["method"], row["attn"], row["budget_spec"], row["budget"]), []
        ).append(row)
    med = {
        key: {k: statistics.median(r[k] for r in rows) for k in MEDIAN_KEYS} for key, rows in groups.items()
    }
    out = []
    for key, rows in groups.items():
        length, name, attn, spec, budget = key
        ref_key = next(k for k in groups if k[0] == length and (k[1], k[2]) == REFERENCE)
        ref, m = med[ref_key], med[key]
        ref_tokens = groups[ref_key][0]["tokens"]
        tokens = rows[0]["tokens"]
        match = next(
            (i for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=False)) if a != b),
            min(len(tokens), len(ref_tokens)),
        )
        ceiling_key = (length, CEILING, "sdpa", spec, budget)
        vs_ceiling = (
            m["decode_tok_s"] / med[ceiling_key]["decode_tok_s"]
            if ceiling_key in med and name != CEILING
            else float("nan")
        )
        out.append(
            {
                "length": length,
                "method": name,
                "attn": attn,
                "budget_spec": spec,
                "budget": budget if budget is not None else "",
                "compressed": rows[0]["compressed"],
                "repeats": len(rows),
                "prefill_s": m["prefill_s"],
                "compress_s": m["compress_s"],
                "prefill_overhead_s": m["prefill_s"] - ref["prefill_s"],
                "prefill_ratio": m["prefill_s"] / ref["prefill_s"],
                "decode_s": m["decode_s"],
                "decode_tok_s": m["decode_tok_s"],
                "decode_speedup": m["decode_tok_s"] / ref["decode_tok_s"],
                "decode_vs_ceiling": vs_ceiling,
                "cache_bytes": int(m["cache_bytes"]),
                "memory_ratio": m["cache_bytes"] / ref["cache_bytes"],
                "kept_entries": int(m["kept_entries"]),
                "prefill_cpu_s": m["prefill_cpu_s"],
                "compress_cpu_s": m["compress_cpu_s"],
                "prefill_cpu_ratio": m["prefill_cpu_s"] / ref["prefill_cpu_s"],
                "decode_cpu_s": m["decode_cpu_s"],
                "decode_cpu_speedup": ref["decode_cpu_s"] / m["decode_cpu_s"],
                "rss_peak_mb": m["rss_peak_mb"],
                "rss_delta_mb": m["rss_delta_mb"],
                "rss_delta_ratio": m["rss_delta_mb"] / ref["rss_delta_mb"]
                if ref["rss_delta_mb"] > 0
                else float("nan"),
                "tokens_match_full": match,
                "new_tokens": new_tokens,
                "threads": threads,
            }
        )
    return out


def budget_sort(col: Any) -> Any:
    """Sort budget specs numerically with ``<p>pct`` last and full's empty spec first."""
    if col.name != "budget_spec":
        return col
    return col.map(lambda s: -1 if s == "" else (10**9 + float(s[:-3]) if s.endswith("pct") else float(s)))
