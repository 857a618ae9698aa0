"""The paper's claims, judged by code from the run folders: ``results/claims.md`` and ``claims.csv``.

Every comparison is a paired bootstrap over the sample ids two runs share (same benchmark, same
samples, so between-sample spread cancels), of ``A - B`` oriented so that a positive difference
means A is better (the sign is flipped for lower-is-better metrics). A comparison is *separated*
when its 95% interval excludes 0; ``± hw`` is half the interval's width, about the smallest
difference that comparison could have told from 0.

Each claim is judged apart in each question setting that has runs for it (docs/question.md):
``aware`` (the question is compressed with the context, the paper's setting) and ``agnostic`` (the
context is compressed before the question is seen). Runs in compression-ratio units are judged in
settings of their own, ``aware (ratio)`` and ``agnostic (ratio)``: a ratio is not a budget, so
they are compared only with runs at the same ratio, and claim (a)'s mean rank is taken over the
ratio tables of that setting (pooling them with budget runs would rank caches of different sizes
against each other). A setting without a comparison for a claim is left out. In each setting:

* ``supported``: at least one comparison separated in the claimed direction and none against it;
* ``contradicted``: at least one separated against the claim and none for it;
* ``not separable at this sample count``: nothing separated, or separated both ways. The verdict
  then says what the runs could have seen: differences smaller than the median ``hw`` of the
  claim's comparisons on a benchmark could not be detected. One number per benchmark, since each
  has its own unit; the median rather than the largest, so that one comparison over a few shared
  samples does not speak for the whole benchmark. Intervals of zero width (the same difference on
  every shared sample) have no spread to measure by and are left out of the median;
* ``not tested``: no setting has the runs the claim needs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from eval.benchmarks.ruler.tasks import TASKS as RULER_TASKS
from eval.collect import AGNOSTIC, AWARE, BUDGET_UNIT, FULL_METHOD, RATIO_UNIT, Run, kept_mean, split_bench
from eval.frames import format_cell, write_csv
from eval.stats import paired_bootstrap_ci, separated
from eval.tables import AVERAGE, BenchTable, ResultTables, average_weights, group_runs, sample_values

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

# The order settings are reported in: the paper's (aware, budgets) first.
_SETTING_ORDER = [(AWARE, BUDGET_UNIT), (AGNOSTIC, BUDGET_UNIT), (AWARE, RATIO_UNIT), (AGNOSTIC, RATIO_UNIT)]


def setting_label(setting: str, unit: str) -> str:
    """``"aware"``, ``"agnostic"``, ``"aware (ratio)"`` or ``"agnostic (ratio)"``: where a claim is judged."""
    return setting if unit == BUDGET_UNIT else f"{setting} ({unit})"


SETTINGS = [setting_label(s, u) for s, u in _SETTING_ORDER]


def bench_label(bench: str) -> str:
    """The setting label of a results benchmark name (:func:`eval.collect.split_bench`)."""
    _, setting, unit = split_bench(bench)
    return setting_label(setting, unit)


def _format_size(value: float) -> str:
    """A budget as an integer, a compression ratio as it was given."""
    return str(int(value)) if float(value).is_integer() else f"{float(value):g}"


@dataclass
class Comparison:
    """``A - B`` (positive = A better) on one benchmark, task subset, setting and budget.

    ``bench`` is the benchmark without its setting suffixes (``niah`` for ``niah_agnostic``);
    ``budget`` holds the compression ratio when ``unit`` is ``"ratio"``.
    """

    bench: str
    tasks: str
    budget: int | float
    a: str
    b: str
    n: int
    a_mean: float
    b_mean: float
    diff: float
    low: float
    high: float
    setting: str = AWARE
    unit: str = BUDGET_UNIT

    @property
    def separated(self) -> bool:
        return self.n > 1 and separated(self.low, self.high)

    @property
    def half_width(self) -> float:
        """Half the width of the 95% interval: roughly the smallest difference it separates from 0."""
        return (self.high - self.low) / 2.0

    @property
    def label(self) -> str:
        """The setting the comparison is judged in (:func:`setting_label`)."""
        return setting_label(self.setting, self.unit)

    @property
    def where(self) -> str:
        """``niah``, or ``ruler retrieval`` for a task subset."""
        return self.bench if self.tasks == "all" else f"{self.bench} {self.tasks}"


@dataclass
class Claim:
    """One claim, its comparisons in every setting and the verdict each setting gets."""

    key: str
    title: str
    statement: str
    rule: str
    comparisons: list[Comparison] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Per setting label: why separated evidence alone does not support the claim (e.g. lava not
    # first by mean rank).
    blocked: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self) -> list[str]:
        """The setting labels with at least one comparison, in report order."""
        present = {c.label for c in self.comparisons}
        return [s for s in SETTINGS if s in present]

    def in_setting(self, setting: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.label == setting]

    def _separated(self, setting: str, sign: float) -> bool:
        return any(c.separated and sign * c.diff > 0 for c in self.in_setting(setting))

    def one_sided(self, setting: str) -> bool:
        """Some comparison of ``setting`` separated in the claimed direction and none against it."""
        return self._separated(setting, 1.0) and not self._separated(setting, -1.0)

    def verdict(self, setting: str) -> str:
        """The verdict in one setting label (``not tested`` when it has no comparison)."""
        if not self.in_setting(setting):
            return NOT_TESTED
        if self.one_sided(setting):
            return NOT_SEPARABLE if setting in self.blocked else SUPPORTED
        if self._separated(setting, -1.0) and not self._separated(setting, 1.0):
            return CONTRADICTED
        return NOT_SEPARABLE

    @property
    def verdicts(self) -> dict[str, str]:
        """``{setting label: verdict}`` over the settings with comparisons (empty: not tested)."""
        return {s: self.verdict(s) for s in self.settings}

    def detectable(self, setting: str) -> dict[str, float | None]:
        """Per benchmark (and task subset) of ``setting``: the median half-width of its comparisons'
        95% intervals, the difference below which these runs could not tell the methods apart.

        Intervals of zero width (the same difference on every shared sample, or one sample) have
        no spread to measure a resolution by and are left out; None when no interval has a width.
        """
        widths: dict[str, list[float]] = {}
        for c in self.in_setting(setting):
            widths.setdefault(c.where, []).extend([c.half_width] if c.half_width > 0 else [])
        return {where: statistics.median(w) if w else None for where, w in widths.items()}

    def verdict_text(self, setting: str) -> str:
        """The verdict, with the detectable difference when it is not separable."""
        verdict = self.verdict(setting)
        if verdict != NOT_SEPARABLE:
            return f"**{verdict}**"
        detectable = self.detectable(setting)
        sized = [f"{hw:.3f} on {where}" for where, hw in detectable.items() if hw is not None]
        flat = [where for where, hw in detectable.items() if hw is None]
        parts = [f"differences smaller than {', '.join(sized)} could not be detected"] if sized else []
        if flat:
            parts.append(f"no spread on {', '.join(flat)}: every shared sample gave the same difference")
        return f"**{verdict}** ({'; '.join(parts)})"


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
    base, setting, unit = split_bench(a.bench)
    size = a.budget or 0
    return Comparison(
        bench=base,
        tasks=tasks,
        budget=float(size) if unit == RATIO_UNIT else int(size),
        a=a.method,
        b=b.method,
        n=len(ids),
        a_mean=sum(xa) / len(xa),
        b_mean=sum(xb) / len(xb),
        diff=diff,
        low=low,
        high=high,
        setting=setting,
        unit=unit,
    )


def _index(runs: Sequence[Run]) -> dict[tuple[str, str], dict[tuple[str, int | float | None], Run]]:
    return {key: {(r.method, r.budget): r for r in group} for key, group in group_runs(runs).items()}


def one_kv_head(run: Run) -> str | None:
    """Why ``run`` cannot test a claim about head budgets: its model has one KV head per layer (from
    ``kept_per_head.npy``), so a head allocator has nothing to divide and ``lava_head_only`` minus
    ``snapkv`` would compare their scorers alone. None when the run has several KV heads, or no
    array to tell by."""
    kept = kept_mean(run)
    if kept is not None and kept.shape[-1] == 1:
        return "one KV head per layer, so head budgets have nothing to allocate"
    return None


Untestable = Callable[[Run], str | None]


def _ablation_comparisons(
    runs: Sequence[Run],
    specs: Sequence[tuple[str, str, TaskFilter]],
    winner: str,
    rival: str,
    untestable: Untestable = lambda run: None,
) -> tuple[list[Comparison], list[str], list[str]]:
    """``winner`` vs ``snapkv`` and vs ``rival`` at every budget of each (bench, task subset) spec,
    in every setting.

    Missing runs are listed for the settings that have comparisons, or without a setting when
    none has (the claim is then not tested). A ``winner`` run for which ``untestable`` gives a
    reason is not compared; the third list says which (bench, model) were left out and why.
    """
    comparisons: list[Comparison] = []
    found: set[tuple[str, str]] = set()  # (spec bench, setting label)
    excluded: dict[tuple[str, str, str], str] = {}  # (bench, setting, model) -> reason
    index = _index(runs)
    for bench, label, keep in specs:
        for (_, name), by_key in index.items():
            if split_bench(name).base != bench:
                continue
            budgets = sorted({b for m, b in by_key if m == winner and b is not None})
            for budget in budgets:
                run = by_key[(winner, budget)]
                reason = untestable(run)
                if reason is not None:
                    excluded[(name, label, run.model)] = reason
                    found.add((bench, bench_label(name)))  # run, but unable to test: not "missing"
                    continue
                for other in (UNIFORM, rival):
                    if (other, budget) in by_key:
                        comparison = compare(run, by_key[(other, budget)], keep, label)
                        if comparison is not None:
                            comparisons.append(comparison)
                            found.add((bench, comparison.label))
    settings = [s for s in SETTINGS if any(c.label == s for c in comparisons)]
    missing = []
    for bench, label, _ in specs:
        for setting in settings or [None]:
            seen = (bench, setting) in found if setting else any(b == bench for b, _ in found)
            if not seen:
                where = f" in the {setting} setting" if setting else ""
                missing.append(
                    f"{bench} ({label}){where}: no {winner} run with a {UNIFORM} or {rival} run at its budget"
                )
    left_out = [f"{name} ({label}) on {model}: {why}" for (name, label, model), why in excluded.items()]
    return comparisons, missing, left_out


def mean_ranks(tables: Sequence[BenchTable]) -> pd.DataFrame:
    """Per (budget, method) of compressed methods: the mean over ``tables`` of the method's rank at
    that budget (1 = best, ties share the mean rank, lower-is-better benchmarks ascending) and the
    number of benchmarks ranked.

    The same ranks as the summary table's (:func:`eval.tables.summary_table`), computed here on the
    tables' own budget column so that compression ratios keep their value.
    """
    parts = []
    for table in tables:
        part = table.frame.loc[table.frame["method"] != FULL_METHOD, ["budget", "method", AVERAGE]].copy()
        part["rank"] = part.groupby("budget")[AVERAGE].rank(ascending=table.lower_is_better, method="average")
        part["bench"] = table.bench
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["budget", "method", "mean rank", "benches"])
    long = pd.concat(parts, ignore_index=True)
    stats = long.groupby(["budget", "method"]).agg(mean_rank=("rank", "mean"), benches=("bench", "nunique"))
    return stats.reset_index().rename(columns={"mean_rank": "mean rank"})


def lava_best_claim(runs: Sequence[Run], tables: Sequence[BenchTable]) -> Claim:
    """(a) LAVa vs the best other compressed method of each benchmark and budget, per setting.

    ``tables`` are the benchmark tables of ``runs``: in each setting, their mean ranks over that
    setting's tables decide whether lava is first.
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
    for setting in claim.settings:
        ranks = mean_ranks([t for t in tables if bench_label(t.bench) == setting])
        unit = claim.in_setting(setting)[0].unit
        behind = []
        for budget, part in ranks.groupby("budget"):
            ranked = part.dropna(subset=["mean rank"]).sort_values(["mean rank", "method"])
            if ranked.empty or LAVA not in set(ranked["method"]):
                continue
            first = ranked.iloc[0]
            own = float(ranked.loc[ranked["method"] == LAVA, "mean rank"].iloc[0])
            size = f"{unit} {_format_size(budget)}"
            claim.notes.append(
                f"{setting}, {size}: lava's mean rank across {int(first['benches'])} benchmark(s) is "
                f"{own:.2f}; first is {first['method']} ({first['mean rank']:.2f})"
            )
            if own > float(first["mean rank"]):
                behind.append(size)
        if behind:
            claim.blocked[setting] = f"lava is not first by mean rank at {', '.join(behind)}"
    return claim


def ablation_claim(
    runs: Sequence[Run], key: str, title: str, where: str, specs: Sequence[tuple[str, str, TaskFilter]],
    winner: str, rival: str, untestable: Untestable = lambda run: None,
) -> Claim:  # fmt: skip
    """``winner`` beats uniform budgets (snapkv) and the other ablation ``rival`` on ``specs``; runs
    for which ``untestable`` gives a reason are left out, and the claim's notes say why."""
    comparisons, missing, left_out = _ablation_comparisons(runs, specs, winner, rival, untestable)
    return Claim(
        key=key,
        title=title,
        statement=f"On {where}, {winner} beats {UNIFORM} (uniform budgets) and {rival}.",
        rule=f"{winner} minus {UNIFORM} and minus {rival} at each budget, paired over shared samples",
        comparisons=comparisons,
        missing=missing,
        notes=[f"left out, {note}" for note in left_out],
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
    # On a model with one KV head per layer (Gemma 3 270M) lava_head_only and snapkv differ only in
    # their scorers: such runs say nothing about head budgets.
    return ablation_claim(runs, "c", title, where, specs, HEAD_ONLY, LAYER_ONLY, untestable=one_kv_head)


def judge_claims(result: ResultTables) -> list[Claim]:
    """The three claims, judged on the runs and tables of one report."""
    runs = result.runs
    return [lava_best_claim(runs, result.tables), layer_budget_claim(runs), head_budget_claim(runs)]


CSV_COLUMNS = ["claim", "setting", "unit", "verdict", "bench", "tasks", "budget", "a", "b", "n", "a_mean",
               "b_mean", "diff", "low", "high", "half_width", "separated"]  # fmt: skip


def claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per comparison, grouped by claim and setting: the setting's verdict, the comparison's
    means, difference, 95% interval and its half-width.

    ``budget`` holds the compression ratio on rows whose ``unit`` is ``ratio`` (integers and ratios
    kept apart in one column of Python objects, so a budget is written ``64``, not ``64.0000``).
    """
    rows = [
        {
            **vars(c),
            "claim": claim.key,
            "verdict": claim.verdict(setting),
            "half_width": c.half_width,
            "separated": c.separated,
        }  # fmt: skip
        for claim in claims
        for setting in claim.settings
        for c in claim.in_setting(setting)
    ]
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    frame["budget"] = pd.Series([r["budget"] for r in rows], dtype=object)
    return frame


def claims_markdown(claims: Sequence[Claim], header: Sequence[str] = ()) -> str:
    lines = ["# The paper's claims, judged by code", ""]
    lines += [f"{h}  " for h in header]
    lines += ["", __doc__.split("\n\n", 1)[1].strip(), ""]
    for claim in claims:
        lines += [f"## ({claim.key}) {claim.title}", ""]
        if claim.settings:
            lines += [f"- {setting}: {claim.verdict_text(setting)}" for setting in claim.settings]
        else:
            lines.append(f"**{NOT_TESTED}**")
        lines += ["", claim.statement, "",
                  f"Compared: {claim.rule}. Differences are oriented so that positive favours the first method.", ""]  # fmt: skip
        if claim.comparisons:
            lines += ["| setting | bench | tasks | budget | A | B | n | A mean | B mean | A - B [95% CI] | ± hw | separated |",
                      "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
            for setting in claim.settings:
                for c in claim.in_setting(setting):
                    lines.append(
                        f"| {setting} | {c.bench} | {c.tasks} | {_format_size(c.budget)} | {c.a} | {c.b} | {c.n} "
                        f"| {format_cell(c.a_mean, 3)} | {format_cell(c.b_mean, 3)} "
                        f"| {c.diff:+.3f} [{c.low:+.3f}, {c.high:+.3f}] | ±{c.half_width:.3f} "
                        f"| {'yes' if c.separated else 'no'} |"
                    )
            lines.append("")
        lines += [f"- {note}" for note in claim.notes] + ([""] if claim.notes else [])
        for setting in claim.settings:
            if setting in claim.blocked and claim.one_sided(setting):
                lines += [f"{setting}: separated evidence points one way, but {claim.blocked[setting]}.", ""]
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
