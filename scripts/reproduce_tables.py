"""Run a sweep profile and regenerate ``results/`` (tables, figures, claims) from exactly its runs.

    python scripts/reproduce_tables.py                          # configs/sweep/cpu.yaml (make reproduce-tables)
    python scripts/reproduce_tables.py --profile configs/sweep/paper.yaml --launcher slurm \\
        --launcher-arg hydra.launcher.partition=gpu             # one SLURM job per (model, bench, shard)
    python scripts/reproduce_tables.py --bench niah --bench ruler   # some benches of the profile
    python scripts/reproduce_tables.py --report-only            # rebuild results/ from the profile's folders

Each (model, bench) of the profile is ONE sweep (``run.py bench=... methods=... budgets=[...]``: one
prefill per sample for every configuration), writing the run folders single runs write, so a killed
run resumes where it stopped. ``--launcher local`` runs the sweeps here, one after another, with a
progress bar per sweep and an overall ETA; ``slurm`` (or ``submitit_local``, the same path with local
processes) submits one Hydra multirun per (model, bench) whose jobs are its shards
(``shard=0..N-1 num_shards=N``, N from the profile's ``shards``), waits for them, and merges the
shards (``scripts/merge_shards.py``). Then ``write_results`` reads exactly the profile's run folders
(not whatever else lies under the output root): rerunning writes the same bytes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from merge_shards import merge_root  # noqa: E402

from eval.collect import Run, load_run  # noqa: E402
from eval.compose import compose_config as compose_sweep  # noqa: E402
from eval.method_configs import configurations, resolve_budgets, resolve_methods, single_config  # noqa: E402
from eval.results import write_results  # noqa: E402
from eval.run_folder import run_dir_for  # noqa: E402
from lava.errors import UserError  # noqa: E402

LAUNCHERS = ("local", "slurm", "submitit_local")


@dataclass
class Sweep:
    """One (model, bench) of a profile: the overrides of its ``run.py`` sweep and its shard count."""

    model: str
    bench: str
    overrides: list[str]
    shards: int = 1

    @property
    def label(self) -> str:
        return f"{self.model}/{self.bench}"


def load_profile(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no profile {path}; pick one of configs/sweep/*.yaml")
    profile = yaml.safe_load(path.read_text())
    for key in ("models", "methods", "budgets", "benches"):
        if key not in profile:
            raise UserError(f"profile {path} has no '{key}'")
    return profile


def plan(profile: dict[str, Any], benches: list[str] | None, options: dict[str, str | None]) -> list[Sweep]:
    """The profile's sweeps, in profile order; a bench whose ``requires`` option is unset is skipped.

    ``options`` maps a ``requires`` name (``longbench_dir``) to its value; the value is passed to
    the sweep as ``bench.data_dir``.
    """
    known = list(profile["benches"])
    unknown = sorted(set(benches or []) - set(known))
    if unknown:
        raise UserError(f"unknown bench(es) {unknown}; the profile has {known}")
    shards = profile.get("shards") or {}
    sweeps = []
    for model in profile["models"]:
        for bench in benches or known:
            entry = profile["benches"][bench]
            # A bench entry may name the models it runs on (the model that fits that benchmark on
            # this machine, docs/reproduce.md); it then runs once per named model, in the first
            # profile model's turn, so the sweep order stays the profile's bench order.
            own_models = entry.get("models") if isinstance(entry, dict) else None
            if own_models is not None:
                if model != profile["models"][0]:
                    continue
                for own in own_models:
                    sweeps.append(_sweep(shards, own, bench, entry, options, benches))
                continue
            sweeps.append(_sweep(shards, model, bench, entry, options, benches))
    return [s for s in sweeps if s is not None]


def _sweep(
    shards: Any,
    model: str,
    bench: str,
    entry: Any,
    options: dict[str, str | None],
    benches: list[str] | None,
) -> Sweep | None:
    """One (model, bench) sweep of :func:`plan`; None when the bench's ``requires`` option is unset."""
    overrides = list(entry["overrides"] if isinstance(entry, dict) else entry)
    needs = entry.get("requires") if isinstance(entry, dict) else None
    if needs:
        if not options.get(needs):
            if benches and bench in benches:
                raise UserError(f"bench {bench} needs --{needs.replace('_', '-')} <folder>")
            return None
        overrides.append(f"bench.data_dir={options[needs]}")
    count = shards.get(bench, shards.get("default", 1)) if isinstance(shards, dict) else shards
    return Sweep(model, bench, [f"model={model}", *overrides], int(count))


def sweep_overrides(profile: dict[str, Any], sweep: Sweep, output_root: Path) -> list[str]:
    """The sweep's overrides: the bench's own, then the profile's methods and budgets unless the
    bench entry sets them itself (e.g. a smaller grid for a second question setting)."""
    methods = profile["methods"]
    methods = methods if isinstance(methods, str) else f"[{','.join(methods)}]"
    budgets = f"[{','.join(str(b) for b in profile['budgets'])}]"
    own = {o.split("=", 1)[0].strip("'\"") for o in sweep.overrides}
    grid = [f"{k}={v}" for k, v in (("methods", methods), ("budgets", budgets)) if k not in own]
    return [*sweep.overrides, *grid, f"output_root={output_root}"]


def run_folders(cfg: DictConfig) -> list[Path]:
    """The unsharded run folder of every configuration of a sweep config."""
    single_shard = cfg.copy()
    single_shard.shard, single_shard.num_shards = 0, 1
    names, budgets = resolve_methods(cfg.methods), resolve_budgets(cfg.budgets)
    return [run_dir_for(single_config(single_shard, n, b)) for n, b in configurations(names, budgets)]


def run_local(configs: list[tuple[Sweep, DictConfig]]) -> None:
    """Each sweep in turn; an ETA for the rest from the seconds per sample measured so far."""
    from eval.sweep import run_sweep

    start, done_samples = time.perf_counter(), 0
    for k, (sweep, cfg) in enumerate(configs, 1):
        print(f"[reproduce] sweep {k}/{len(configs)}: {sweep.label}", flush=True)
        summary = run_sweep(cfg)
        done_samples += summary.samples
        elapsed = time.perf_counter() - start
        print(
            f"[reproduce] {sweep.label}: {summary.samples} samples in {summary.elapsed_seconds:.0f} s; "
            f"{elapsed / 60:.1f} min so far, {len(configs) - k} sweep(s) left",
            flush=True,
        )


def submit(sweeps: list[tuple[Sweep, list[str]]], launcher: str, launcher_args: list[str]) -> None:
    """One Hydra multirun per (model, bench): its jobs are the shards; all multiruns run side by side.

    Each multirun blocks until its jobs finish (hydra-submitit-launcher waits for the results)."""
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "0"))
    procs = []
    for sweep, overrides in sweeps:
        shard_values = ",".join(str(i) for i in range(sweep.shards))
        command = [sys.executable, str(REPO / "run.py"), "-m", f"hydra/launcher={launcher}", *overrides,
                   f"shard={shard_values}", f"num_shards={sweep.shards}", "progress=false", *launcher_args]  # fmt: skip
        print(f"[reproduce] submit {sweep.label}: {sweep.shards} job(s)", flush=True)
        procs.append((sweep, subprocess.Popen(command, cwd=REPO, env=env)))
    failed = [sweep.label for sweep, proc in procs if proc.wait() != 0]
    if failed:
        raise UserError(f"multirun(s) failed: {', '.join(failed)}; rerun the same command to resume them")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", type=Path, default=REPO / "configs" / "sweep" / "cpu.yaml")
    parser.add_argument("--bench", action="append", help="bench(es) of the profile to run (default: all)")
    parser.add_argument("--output-root", type=Path, default=REPO / "outputs" / "reproduce")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="tables/, figures/, claims.md")
    parser.add_argument(
        "--perf", type=Path, default=REPO / "results" / "perf" / "perf.csv", help="make bench-perf's CSV"
    )
    parser.add_argument("--longbench-dir", help="LongBench data folder: adds the profile's longbench sweep")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local")
    parser.add_argument(
        "--launcher-arg", action="append", default=[], help="hydra.launcher.<field>=<value> (repeatable)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="run nothing: report the profile's folders"
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every sweep (e.g. limit=2)")
    args = parser.parse_args()
    output_root = args.output_root.resolve()
    try:
        profile = load_profile(args.profile)
        sweeps = plan(profile, args.bench, {"longbench_dir": args.longbench_dir})
        configs = []
        for sweep in sweeps:  # compose every sweep first: a bad override fails before any work
            overrides = [*sweep_overrides(profile, sweep, output_root), *args.overrides]
            configs.append((sweep, overrides, compose_sweep(overrides)))
        if not args.report_only:
            if args.launcher == "local":
                run_local([(s, c) for s, _, c in configs])
            else:
                submit([(s, o) for s, o, _ in configs], args.launcher, args.launcher_arg)
                merge_root(output_root)
        folders = [f for _, _, cfg in configs for f in run_folders(cfg)]
        finished = [f for f in folders if (f / "scores.json").is_file()]
        if not finished:
            raise UserError(f"no finished run folders of this profile under {output_root}; run it first")
        if len(finished) < len(folders):
            print(f"[reproduce] warning: {len(folders) - len(finished)} run folder(s) unfinished", flush=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    runs: list[Run] = [load_run(f) for f in finished]
    name = profile.get("name", args.profile.stem)
    for path in [*write_results(runs, args.results, name, args.perf), write_readme(profile, args, sweeps)]:
        print(path)


def write_readme(profile: dict[str, Any], args: argparse.Namespace, sweeps: list[Sweep]) -> Path:
    """``results/README.md``: what produced these files, and the profile's deviations from upstream."""
    name = profile.get("name", args.profile.stem)
    lines = [
        f"# Results of the `{name}` profile",
        "",
        "Generated by `scripts/reproduce_tables.py` (`make reproduce-tables"
        + ("" if name == "cpu" else f" PROFILE={name}")
        + "`) from configs/sweep/"
        + f"{args.profile.name}; do not edit. How to read them: docs/results.md; what the profile",
        "does and does not reproduce: docs/reproduce.md.",
        "",
        f"- models: {', '.join(dict.fromkeys(s.model for s in sweeps))}",
        f"- methods: {profile['methods'] if isinstance(profile['methods'], str) else ', '.join(profile['methods'])}",
        f"- budgets: {', '.join(str(b) for b in profile['budgets'])}",
        "- sweeps (Hydra overrides):",
        *[f"  - `{s.label}`: `{' '.join(s.overrides)}`" for s in sweeps],
    ]
    notes = profile.get("notes") or []
    if notes:
        lines += ["", "Deviations from upstream in this profile:", "", *[f"- {n}" for n in notes]]
    path = Path(args.results) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    main()
