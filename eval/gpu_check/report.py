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

TABLES = ("token_identity", "kept_entries", "attention", "perf", "sweep")
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


def _span(r: dict, key: str, fmt: str, count: str) -> str:
    """``median [min, max] (n)`` of a repeated timing."""
    if key not in r:
        return "-"
    return f"{_f(r[key], fmt)} [{_f(r[key + '_min'], fmt)}, {_f(r[key + '_max'], fmt)}] ({r[count]})"


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


# The speed grid's acceptance (issue 20): decode of these methods at the largest budget against its
# full@budget, from medians of at least MIN_REPEATS timed decodes each; cascading CAKE's peak memory
# against SnapKV's; the memory target of these methods at every budget.
DECODE_METHODS, DECODE_TARGET, MIN_REPEATS = ("lava", "adakv"), 0.9, 3
CASCADE_TARGET = 1.1
MEMORY_METHODS = ("lava", "adakv", "snapkv", "cake", "cake_cascading")
CEILING = "full@budget"  # eval.gpu_check.perf.CEILING, not imported: this module needs no torch


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "not measured"}[passed]


def _rate(r: dict) -> str:
    """Median decode rate with its spread and count."""
    return (f"{_f(r['decode_tok_s'], '.1f')} tok/s [{_f(r['decode_tok_s_min'], '.1f')}, "
            f"{_f(r['decode_tok_s_max'], '.1f')}] (n={r['decode_runs']})")  # fmt: skip


def acceptance(results: dict) -> list[dict]:
    """The speed grid's acceptance checks, each ``{check, method, budget, value, target, passed, detail}``;
    ``passed`` is None where the figure is missing (memory off CUDA, fewer than 3 timed decodes)."""
    rows = {(r["method"], r["budget"]): r for r in results.get("perf", []) if "prefill_s" in r}
    budgets = sorted({b for _, b in rows if b != ""}, reverse=True)
    out: list[dict] = []
    if not budgets:
        return out
    top = budgets[0]
    ceiling = rows.get((CEILING, top))
    for method in DECODE_METHODS:
        r = rows.get((method, top))
        if r is None or ceiling is None:
            continue
        ratio = r["decode_tok_s"] / ceiling["decode_tok_s"]
        enough = min(r["decode_runs"], ceiling["decode_runs"]) >= MIN_REPEATS
        out.append({"check": "decode vs full@budget", "method": method, "budget": top, "value": ratio,
                    "target": f">= {DECODE_TARGET}", "passed": bool(ratio >= DECODE_TARGET) if enough and
                    math.isfinite(ratio) else None,
                    "detail": f"{method} {_rate(r)}, full@{top} {_rate(ceiling)}; ratio of medians"
                    + ("" if enough else f" (fewer than {MIN_REPEATS} timed decodes)")})  # fmt: skip
    for budget in budgets:
        cascading, snapkv, cake = (rows.get((m, budget)) for m in ("cake_cascading", "snapkv", "cake"))
        if cascading is None or snapkv is None:
            continue
        ratio = cascading["peak_above_weights_bytes"] / snapkv["peak_above_weights_bytes"]
        default = _f(cake["peak_above_weights_bytes"] / GIB, ".2f") if cake else "-"
        out.append({"check": "cake_cascading peak vs snapkv", "method": "cake_cascading", "budget": budget,
                    "value": ratio, "target": f"<= {CASCADE_TARGET}",
                    "passed": bool(ratio <= CASCADE_TARGET) if math.isfinite(ratio) else None,
                    "detail": f"peak above weights: cake_cascading {_f(cascading['peak_above_weights_bytes'] / GIB, '.2f')} GiB, "
                    f"snapkv {_f(snapkv['peak_above_weights_bytes'] / GIB, '.2f')} GiB, cake (default, "
                    f"non-cascading) {default} GiB"})  # fmt: skip
    for budget in budgets:
        for method in MEMORY_METHODS:
            r = rows.get((method, budget))
            if r is None or "mem_vs_allowance" not in r:
                continue
            out.append({"check": "memory target", "method": method, "budget": budget,
                        "value": r["mem_vs_allowance"], "target": "<= 1", "passed": r["mem_target_passed"],
                        "detail": f"(peak - weights - activations) {_f(r['peak_minus_activations_bytes'] / MIB, '.0f')} MiB, "
                        f"allowance {_f(r['mem_allowance_bytes'] / MIB, '.0f')} MiB"})  # fmt: skip
    return out


def acceptance_lines(checks: list[dict]) -> list[str]:
    """Markdown bullets: one per decode and cascading check, one per budget for the memory target."""
    lines = []
    for c in checks:
        if c["check"] != "memory target":
            lines.append(f"- {c['check']}, {c['method']} @ {c['budget']}: {_f(c['value'], '.2f')} (target "
                         f"{c['target']}) **{_verdict(c['passed'])}**: {c['detail']}")  # fmt: skip
    memory = [c for c in checks if c["check"] == "memory target"]
    for budget in dict.fromkeys(c["budget"] for c in memory):
        cells = [
            f"{c['method']} {_f(c['value'], '.2f')} {_verdict(c['passed'])}"
            for c in memory
            if c["budget"] == budget
        ]
        lines.append(
            f"- memory target @ {budget}, (peak - weights - activations) / allowance <= 1: "
            + ", ".join(cells)
        )
    return lines


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
    batched = results.get("attention_batched", [])
    if batched:
        lines += ["Padded decode attention of several caches per call (`PaddedStore.attend`), by SDPA backend "
                  "(timing only):", "", md_table(batched, {"case": "case", "dtype": "dtype", "caches": "batch",
                  "backend": "backend", "us/call": lambda r: _f(r["us_per_call"], ".1f"), "note": "note"}), ""]  # fmt: skip
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
        lines += [
            "Each configuration: one timed prefill (more for the acceptance rows), an untimed "
            "decode at full size (warm-up), then timed decodes in rounds interleaved with the other "
            "configurations of its budget; figures are medians [min, max]. Memory: weights + the "
            "configuration's own peak above everything else alive. Allowance = (the budget's KV bytes "
            "+ one layer's full prompt KV) x 1.1; the target: (peak - weights - activations) <= allowance.",
            "",
        ]
        lines += [md_table(perf, {"method": "method", "budget": "budget",
                                  "prefill s": lambda r: _span(r, "prefill_s", ".3f", "prefill_runs"),
                                  "compress s": lambda r: _f(r.get("compress_s"), ".3f"),
                                  "decode tok/s": lambda r: _span(r, "decode_tok_s", ".1f", "decode_runs"),
                                  "warm-up tok/s": lambda r: _f(r.get("warmup_tok_s"), ".1f"),
                                  "vs full": lambda r: _f(r.get("decode_speedup"), ".2f"),
                                  "vs full@budget": lambda r: _f(r.get("decode_vs_ceiling"), ".2f"),
                                  "KV MiB": lambda r: _f(r.get("kv_bytes", NAN) / MIB, ".1f"),
                                  "peak GiB": lambda r: _f(r.get("peak_bytes", NAN) / GIB, ".2f"),
                                  "peak - w - act. MiB": lambda r: _f(r.get("peak_minus_activations_bytes", NAN) / MIB, ".1f"),
                                  "allowance MiB": lambda r: _f(r.get("mem_allowance_bytes", NAN) / MIB, ".1f"),
                                  "memory target": lambda r: "" if "mem_allowance_bytes" not in r else _verdict(r["mem_target_passed"]),
                                  "error": "error"}),
                  ""]  # fmt: skip
        checks = acceptance(results)
        if checks:
            lines += ["### Acceptance", "", *acceptance_lines(checks)]
        lines.append("")
    if results.get("sweep_phase"):
        from eval.gpu_check.sweep import summary_lines  # here: eval.gpu_check.sweep imports this module

        lines += summary_lines(results["sweep_phase"])
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
    if results.get("perf"):  # recomputed from the rows: the JSON carries the checks the summary shows
        results["acceptance"] = acceptance(results)
    for table in TABLES:
        if results.get(table):
            write_csv(results[table], out / f"{table}.csv")
    (out / "gpu_check.json").write_text(json.dumps(_json_safe(results), indent=1, default=str))
    (out / "summary.md").write_text(summary(results))
