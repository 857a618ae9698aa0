"""The paper's claims, judged by code from the run folders: ``results/claims.md`` and ``claims.csv``.

Every comparison is a paired bootstrap over the sample ids two runs share (same benchmark, same
samples, so between-sample spread cancels), of ``A - B`` oriented so that a positive difference
means A is better (the sign is flipped for lower-is-better metrics). A comparison is *separated*
when its 95% interval excludes 0. A claim's verdict follows from its comparisons:

* ``supported``: at least one comparison separated in the claimed direction and none against it;
* ``contradicted``: at least one separated against the claim and none for it;
* ``not separable at this sample count``: nothing separated, or separated both ways;
* ``not tested``: none of the runs the claim needs exist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from eval.benchmarks.ruler.tasks import TASKS as RULER_TASKS
from eval.collect import FULL_METHOD, Run
from eval.frames import format_cell, write_csv
from eval.stats import paired_bootstrap_ci, separated
from eval.tables import (
    BenchTable,
    ResultTables,
    average_weights,
    group_runs,
    sample_values,
    summary_table,
)

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
NOT_SEPARABLE = "not separable at this sample count"
NOT_TESTED = "not tested"

LAVA = "lava"
LAYER_ONLY = "lava_layer_only"
HEAD_ONLY = "lava_head_only"
UNIFORM = "snapkv"
# Retrieval (extraction) tasks of the multi-task benchmarks (RULER's needle family, InfiniteBench's
# retrieve.* tasks); single-task NIAH is retrieval throughout.
RULER_RETRIEVAL = tuple(t for t, spec in RULER_TASKS.items() if spec.family == "niah")
INFINITEBENCH_RETRIEVAL = ("passkey", "number_string", "kv_retrieval")


@dataclass
class Comparison:
    """``A - B`` (positive = A better) on one benchmark, task subset and budget."""

    bench: str
    tasks: str
    budget: int
    a: str
    b: str
    n: int
    a_mean: float
    b_mean: float
    diff: float
    low: float
    high: float

    @property
    def separated(self) -> bool:
        return self.n > 1 and separated(self.low, self.high)


@dataclass
class Claim:
    key: str
    title: str
    statement: str
    rule: str
    comparisons: list[Comparison] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Why separated evidence alone does not support the claim (e.g. lava not first by mean rank).
    blocked: str | None = None

    def _separated(self, sign: float) -> bool:
        return any(c.separated and sign * c.diff > 0 for c in self.comparisons)

    @property
    def one_sided(self) -> bool:
        """Some comparison separated in the claimed direction and none against it."""
        return self._separated(1.0) and not self._separated(-1.0)

    @property
    def verdict(self) -> str:
        if not self.comparisons:
            return NOT_TESTED
        if self.one_sided:
            return NOT_SEPARABLE if self.blocked else SUPPORTED
        if self._separated(-1.0) and not self._separated(1.0):
            return CONTRADICTED
        return NOT_SEPARABLE


TaskFilter = Callable[[str], bool]


def _paired_values(run: Run, keep: TaskFilter) -> dict[str, float]:
    """Per-sample values whose mean is the mean over the kept tasks of the task scores."""
    per_task = {t: v for t, v in sample_values(run).items() if keep(t)}
    return (
        {i: x for values in average_weights(per_task).values() for i, x in values.items()} if per_task else {}
    )


def compare(a: Run, b: Run, keep: TaskFilter = lambda t: True, tasks: str = "all") -> Comparison | None:
    """Paired comparison of two runs of one benchmark over their shared sample ids (None if none shared)."""
    va, vb = _paired_values(a, keep), _paired_values(b, keep)
    ids = sorted(set(va) & set(vb))
    if not ids:
        return None
    sign = -1.0 if a.lower_is_better else 1.0
    xa, xb = [va[i] for i in ids], [vb[i] for i in ids]
    diff, low, high = paired_bootstrap_ci([sign * x for x in xa], [sign * x for x in xb])
    return Comparison(
        bench=a.bench,
        tasks=tasks,
        budget=int(a.budget or 0),
        a=a.method,
        b=b.method,
        n=len(ids),
        a_mean=sum(xa) / len(xa),
        b_mean=sum(xb) / len(xb),
        diff=diff,
        low=low,
        high=high,
    )


def _index(runs: Sequence[Run]) -> dict[tuple[str, str], dict[tuple[str, int | None], Run]]:
    return {key: {(r.method, r.budget): r for r in group} for key, group in group_runs(runs).items()}


def _ablation_comparisons(
    runs: Sequence[Run], specs: Sequence[tuple[str, str, TaskFilter]], winner: str, rival: str
) -> tuple[list[Comparison], list[str]]:
    """``winner`` vs ``snapkv`` and vs ``rival`` at every budget of each (bench, task subset) spec."""
    comparisons, missing = [], []
    index = _index(runs)
    for bench, label, keep in specs:
        found = False
        for (_, name), by_key in index.items():
            if name != bench:
                continue
            budgets = sorted({b for m, b in by_key if m == winner and b is not None})
            for budget in budgets:
                for other in (UNIFORM, rival):
                    if (other, budget) in by_key:
                        comparison = compare(by_key[(winner, budget)], by_key[(other, budget)], keep, label)
                        if comparison is not None:
                            comparisons.append(comparison)
                            found = True
        if not found:
            missing.append(
                f"{bench} ({label}): no {winner} run with a {UNIFORM} or {rival} run at its budget"
            )
    return comparisons, missing


def lava_best_claim(runs: Sequence[Run], tables: Sequence[BenchTable]) -> Claim:
    """(a) LAVa vs the best other compressed method of each benchmark and budget.

    ``tables`` are the benchmark tables of ``runs``: their mean ranks decide whether lava is first.
    """
    claim = Claim(
        key="a",
        title="LAVa is best on average across benchmarks",
        statement="At every budget, lava beats the strongest other compressed method of each benchmark.",
        rule="per benchmark and budget: lava minus the best other compressed method (by the benchmark "
        "average), paired over shared samples",
    )
    for by_key in _index(runs).values():
        lava_runs = sorted((b, r) for (m, b), r in by_key.items() if m == LAVA and b is not None)
        for budget, run in lava_runs:
            rivals = [r for (m, b), r in by_key.items() if b == budget and m not in (LAVA, FULL_METHOD)]
            if not rivals:
                continue
            sign = -1.0 if run.lower_is_better else 1.0
            best = max(rivals, key=lambda r: (sign * float(r.scores.get("score", float("nan"))), r.method))
            comparison = compare(run, best)
            if comparison is not None:
                claim.comparisons.append(comparison)
    if not claim.comparisons:
        claim.missing.append("no benchmark has a lava run and another compressed method at the same budget")
        return claim
    summary = summary_table(tables)
    for budget, part in summary[summary["method"] != FULL_METHOD].groupby("budget"):
        ranked = part.dropna(subset=["mean rank"]).sort_values(["mean rank", "method"])
        if ranked.empty or LAVA not in set(ranked["method"]):
            continue
        first = ranked.iloc[0]
        own = float(ranked.loc[ranked["method"] == LAVA, "mean rank"].iloc[0])
        claim.notes.append(
            f"budget {budget}: lava's mean rank across {int(first['benches'])} benchmark(s) is {own:.2f}; "
            f"first is {first['method']} ({first['mean rank']:.2f})"
        )
        if own > float(first["mean rank"]):
            claim.blocked = f"lava is not first by mean rank at budget {budget}"
    return claim


def ablation_claim(
    runs: Sequence[Run], key: str, title: str, where: str, specs: Sequence[tuple[str, str, TaskFilter]],
    winner: str, rival: str,
) -> Claim:  # fmt: skip
    """``winner`` beats uniform budgets (snapkv) and the other ablation ``rival`` on ``specs``."""
    comparisons, missing = _ablation_comparisons(runs, specs, winner, rival)
    return Claim(
        key=key,
        title=title,
        statement=f"On {where}, {winner} beats {UNIFORM} (uniform budgets) and {rival}.",
        rule=f"{winner} minus {UNIFORM} and minus {rival} at each budget, paired over shared samples",
        comparisons=comparisons,
        missing=missing,
    )


def layer_budget_claim(runs: Sequence[Run]) -> Claim:
    """(b) dynamic layer budgets on generation tasks: code completion and fidelity on code."""
    specs = [("code_completion", "all", lambda t: True), ("fidelity", "code", lambda t: "code" in t)]
    title = "Dynamic layer budgets matter for generation tasks"
    return ablation_claim(
        runs, "b", title, "code completion and on fidelity over code", specs, LAYER_ONLY, HEAD_ONLY
    )


def head_budget_claim(runs: Sequence[Run]) -> Claim:
    """(c) dynamic head budgets on extraction tasks: NIAH, RULER and InfiniteBench retrieval."""
    specs = [
        ("niah", "all", lambda t: True),
        ("ruler", "retrieval", lambda t: t in RULER_RETRIEVAL),
        ("infinitebench", "retrieval", lambda t: t in INFINITEBENCH_RETRIEVAL),
    ]
    title = "Dynamic head budgets matter for extraction tasks"
    where = "NIAH, RULER retrieval and InfiniteBench retrieval"
    return ablation_claim(runs, "c", title, where, specs, HEAD_ONLY, LAYER_ONLY)


def judge_claims(result: ResultTables) -> list[Claim]:
    """The three claims, judged on the runs and tables of one report."""
    runs = result.runs
    return [lava_best_claim(runs, result.tables), layer_budget_claim(runs), head_budget_claim(runs)]


def claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per comparison: claim, verdict, bench, tasks, budget, A, B, n, means, diff and interval."""
    rows = [
        {"claim": c.key, "verdict": c.verdict, **vars(comp), "separated": comp.separated}
        for c in claims
        for comp in c.comparisons
    ]
    columns = ["claim", "verdict", "bench", "tasks", "budget", "a", "b", "n", "a_mean", "b_mean", "diff",
               "low", "high", "separated"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def claims_markdown(claims: Sequence[Claim], header: Sequence[str] = ()) -> str:
    lines = ["# The paper's claims, judged by code", ""]
    lines += [f"{h}  " for h in header]
    lines += ["", __doc__.split("\n\n", 1)[1].strip(), ""]
    for claim in claims:
        lines += [f"## ({claim.key}) {claim.title}: **{claim.verdict}**", "", claim.statement, "",
                  f"Compared: {claim.rule}. Differences are oriented so that positive favours the first method.", ""]  # fmt: skip
        if claim.comparisons:
            lines += ["| bench | tasks | budget | A | B | n | A mean | B mean | A - B [95% CI] | separated |",
                      "|---|---|---:|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
            for c in claim.comparisons:
                lines.append(
                    f"| {c.bench} | {c.tasks} | {c.budget} | {c.a} | {c.b} | {c.n} | {format_cell(c.a_mean, 3)} "
                    f"| {format_cell(c.b_mean, 3)} | {c.diff:+.3f} [{c.low:+.3f}, {c.high:+.3f}] "
                    f"| {'yes' if c.separated else 'no'} |"
                )
            lines.append("")
        lines += [f"- {note}" for note in claim.notes] + ([""] if claim.notes else [])
        if claim.blocked and claim.one_sided:
            lines += [f"Separated evidence points one way, but {claim.blocked}.", ""]
        for note in claim.missing:
            lines += [f"Not run: {note}.", ""]
    return "\n".join(lines)


def write_claims(result: ResultTables, out: Path) -> list[Path]:
    """``out/claims.md`` and ``out/claims.csv``, judged on the runs and tables of ``result``."""
    runs = result.runs
    claims = judge_claims(result)
    commits = sorted({c for c in (r.commit for r in runs) if c})
    header = [
        f"model: {', '.join(sorted({r.model for r in runs})) or 'none'}",
        f"profile: {result.profile or 'ad hoc (not a sweep profile)'}",
        f"git commit: {', '.join(commits) or 'unknown'}",
    ]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "claims.md"
    md.write_text(claims_markdown(claims, header), encoding="utf-8")
    return [md, write_csv(claims_frame(claims), out / "claims.csv", header=header, float_format="%.4f")]
