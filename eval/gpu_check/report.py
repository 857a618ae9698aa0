"""The check's files: one CSV per table, ``gpu_check.json`` with everything, ``summary.md``.

Written with the standard library only (no pandas), so the device machine needs nothing extra. At
most six files, since a device call brings back at most eight.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

TABLES = ("token_identity", "kept_entries", "attention", "perf")
GIB = 2**30
NAN = float("nan")
MIB = 2**20


def write_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def md_table(rows: list[dict], columns: dict[str, Any]) -> str:
    """Pipe table; ``columns`` maps header -> key or callable(row)."""
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for r in rows:
        cells = [str(get(r) if callable(get) else r.get(get, "")) for get in columns.values()]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


def _f(value: Any, fmt: str) -> str:
    return (
        "-" if value in ("", None) or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)
    )


def verdicts(results: dict) -> dict[str, str]:
    """PASS / FAIL / not run, per correctness table (a table passes when every row that ran passed)."""
    out = {}
    for table in ("token_identity", "kept_entries", "attention"):
        rows = [r for r in results.get(table, []) if r.get("passed") is not None]
        if not rows:
            out[table] = "not run"
            continue
        failed = [r for r in rows if not r["passed"]]
        out[table] = "PASS" if not failed else f"FAIL ({len(failed)} of {len(rows)} rows)"
    return out


def acceptance(perf: list[dict], budget: int) -> list[dict]:
    """LAVa's and Ada-KV's decode and memory figures at ``budget`` (the issue's acceptance numbers)."""
    return [r for r in perf if r["method"] in ("lava", "adakv") and r["budget"] == budget]


def summary(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"# GPU check: {meta['device_name']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Commit {meta['commit']}; Python {meta['python']}, torch {meta['torch']} (CUDA {meta['cuda']}), "
        f"transformers {meta['transformers']}, flash-attn {meta['flash_attn']}; TF32 matmul {meta['tf32']}.  ",
        f"Correctness model: {meta.get('correctness_model', '-')}. Speed model: {meta.get('perf_model', '-')}.  ",
        f"Wall time {meta['wall_s']:.0f} s of a {meta['time_budget_s']:.0f} s budget.",
        "",
        "## Correctness",
        "",
    ]
    v = verdicts(results)
    lines += [
        f"- token identity (budget >= prompt, greedy, every method vs full cache): **{v['token_identity']}**"
    ]
    lines += [
        f"- kept entries, device vs CPU on identical fp32 inputs (budget < prompt): **{v['kept_entries']}**"
    ]
    lines += [f"- decode attention vs dense float64 reference: **{v['attention']}**", ""]
    tok = results.get("token_identity", [])
    if tok:
        lines += [md_table(tok, {"dtype": "dtype", "method": "method", "decode path": "decode_path",
                                 "identical": "identical", "first divergence": "first_divergence",
                                 "ref margin": lambda r: _f(r["ref_margin"], ".3g"),
                                 "logit err / std": lambda r: _f(r["logit_err"], ".2e"),
                                 "eager vs sdpa": lambda r: _f(r["noise_floor"], ".2e"),
                                 "tol": lambda r: _f(r["logit_tol"], ".2e"),
                                 "passed": "passed"}), ""]  # fmt: skip
    kept = results.get("kept_entries", [])
    if kept:
        lines += [md_table(kept, {"method": "method", "budget": "budget", "heads identical":
                                  lambda r: f"{r['identical_heads']}/{r['heads']}", "entries differing": "diff_entries", "kept count diff": "count_diff",
                                  "max score gap": lambda r: _f(r["max_score_gap"], ".2g"), "passed": "passed"}), ""]  # fmt: skip
    att = results.get("attention", [])
    if att:
        lines += [md_table(att, {"case": "case", "dtype": "dtype", "path": "path", "ran": "ran",
                                 "max abs err": lambda r: _f(r["max_abs_err"], ".2e"),
                                 "rel err": lambda r: _f(r["rel_err"], ".2e"),
                                 "passes if": lambda r: f"{r['criterion']} <= {r['tol']}",
                                 "us/call": lambda r: _f(r["us_per_call"], ".1f"), "passed": "passed",
                                 "note": "note"}), ""]  # fmt: skip
    perf = results.get("perf", [])
    if perf:
        extra = results.get("perf_meta", {})
        lines += ["## Speed and memory", ""]
        lines += [
            f"Prompt {extra.get('prompt_tokens')} tokens, {extra.get('decode_steps')} decode steps "
            f"(decode attention inside the model: {extra.get('decode_path')}), "
            f"weights {_f(extra.get('weights_bytes', NAN) / GIB, '.2f')} GiB, uncached prefill activations "
            f"{_f(extra.get('activation_bytes', NAN) / GIB, '.2f')} GiB (memory: `torch.cuda.max_memory_allocated`; "
            "'-' off CUDA). Ratios are against `full` in this run.",
            "",
        ]
        lines += [md_table(perf, {"method": "method", "budget": "budget", "repeat": "repeat",
                                  "prefill s": lambda r: _f(r["prefill_s"], ".3f"),
                                  "compress s": lambda r: _f(r["compress_s"], ".3f"),
                                  "decode tok/s": lambda r: _f(r["decode_tok_s"], ".1f"),
                                  "vs full": lambda r: _f(r.get("decode_speedup"), ".2f"),
                                  "vs full@budget": lambda r: _f(r.get("decode_vs_ceiling"), ".2f"),
                                  "KV MiB": lambda r: _f(r["kv_bytes"] / MIB, ".1f"),
                                  "peak GiB": lambda r: _f(r["peak_bytes"] / GIB, ".2f"),
                                  "decode mem / budget KV": lambda r: _f(r.get("decode_mem_vs_budget"), ".2f"),
                                  "(peak - act.) / budget KV": lambda r: _f(r.get("peak_minus_activations_vs_budget"), ".2f")}),
                  ""]  # fmt: skip
        top = max((r["budget"] for r in perf if r["budget"] != ""), default=None)
        for r in acceptance(perf, top) if top else []:
            lines.append(
                f"- {r['method']} @ {top} (repeat {r.get('repeat', 0)}): decode {_f(r.get('decode_vs_ceiling'), '.2f')} x full@budget "
                f"(target >= 0.9), {_f(r.get('decode_speedup'), '.2f')} x full; peak memory above weights "
                f"{_f(r.get('peak_vs_budget'), '.2f')} x the budget's KV bytes, during "
                f"decode {_f(r.get('decode_mem_vs_budget'), '.2f')} x, peak minus the prefill's own "
                f"activations {_f(r.get('peak_minus_activations_vs_budget'), '.2f')} x (target <= 1.1)"
            )
        lines.append("")
    if results.get("skipped"):
        lines += ["## Skipped (time budget)", ""]
        lines += [
            f"- {s['what']}: needed ~{s['estimate_s']} s, {s['left_s']} s left" for s in results["skipped"]
        ]
        lines.append("")
    if results.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in results["errors"]] + [""]
    return "\n".join(lines)


def write_all(results: dict, out: Path) -> None:
    """(Re)write every file from ``results``: called after each phase, so a killed run keeps its files."""
    out.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        if results.get(table):
            write_csv(results[table], out / f"{table}.csv")
    (out / "gpu_check.json").write_text(json.dumps(_json_safe(results), indent=1, default=str))
    (out / "summary.md").write_text(summary(results))
