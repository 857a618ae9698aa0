"""Benchmark of the shared-prefill sweep against one-by-one runs (``make bench-sweep``).

The same samples and configurations run three ways, each leg in its own fresh process and output
folder so that peak memory and CPU time are the leg's own:

- ``full``: one single run of the full cache over the samples (the reference wall time);
- ``sweep``: one sweep command, ``methods=... budgets=...`` (one prefill per sample);
- ``one_by_one``: every configuration as its own single run, one after another (as before sweeps).

Per leg: wall and CPU seconds, peak RSS, and the time per phase summed from the run folders'
records (prefill, scoring, allocation + packing, decode). Writes ``results/perf/sweep.csv``.

    make bench-sweep                                   # NIAH 9 samples, 9 methods x 3 budgets
    python scripts/bench_sweep.py --legs full sweep    # skip the slow one-by-one leg
    python scripts/bench_sweep.py --reuse results/perf/sweep_legs  # reuse legs measured earlier
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from eval.method_configs import display_order  # noqa: E402

METHODS = display_order()  # every configs/method/*.yaml, the full cache first
BUDGETS = [64, 128, 256]
BENCH = ["bench=niah", "bench.lengths=[1000,2000,3000]", "bench.depths=[0,50,100]"]
PHASES = ("prefill_seconds", "scoring_seconds", "allocation_seconds", "decode_seconds")
COLUMNS = [
    "leg",
    "configurations",
    "samples",
    "wall_seconds",
    "cpu_seconds",
    "peak_rss_mib",
    *PHASES,
    "wall_vs_full",
    "one_by_one_vs_leg",
]


def _configs(methods: list[str], budgets: list[int]) -> list[tuple[str, int]]:
    out = []
    for method in methods:
        for budget in [budgets[0]] if method == "full" else budgets:
            out.append((method, budget))
    return out


def _phase_totals(output_root: Path) -> dict[str, float]:
    """Each phase summed over every record of every run folder under ``output_root`` (single runs)."""
    totals = dict.fromkeys(PHASES, 0.0)
    for path in output_root.rglob("predictions.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                for phase in PHASES:
                    totals[phase] += float(record.get(phase, 0.0) or 0.0)
    return {k: round(v, 2) for k, v in totals.items()}


def run_leg(
    leg: str, methods: list[str], budgets: list[int], limit: int | None, bench: list[str], out_json: Path
) -> None:
    """Worker: run one leg in this process and write its measurements to ``out_json``."""
    from eval.compose import compose_config
    from eval.runner import run

    output_root = Path(tempfile.mkdtemp(prefix=f"bench-sweep-{leg}-"))
    common = [*bench, f"output_root={output_root}", "progress=false"]
    if limit is not None:
        common.append(f"limit={limit}")
    configs = _configs(methods, budgets)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    phases = None
    if leg == "full":
        configs = [("full", budgets[0])]
        run(compose_config([*common, "method=full"]))
    elif leg == "sweep":
        summary = run(
            compose_config(
                [*common, f"methods=[{','.join(methods)}]", f"budgets=[{','.join(map(str, budgets))}]"]
            )
        )
        # Shared phases are counted once (records repeat them in every configuration of a sample).
        phases = {f"{k}_seconds": v for k, v in summary.phase_seconds.items()}
    elif leg == "one_by_one":
        for method, budget in configs:
            run(compose_config([*common, f"method={method}", f"budget={budget}"]))
    else:
        raise SystemExit(f"unknown leg {leg!r}")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    folders = list(output_root.rglob("predictions.jsonl"))
    result = {
        "leg": leg,
        "configurations": len(configs),
        "samples": len(folders[0].read_text().splitlines()) if folders else 0,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "run_folders": len(folders),
        "load_average": os.getloadavg(),
        **(phases or _phase_totals(output_root)),
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--legs", nargs="+", default=["full", "sweep", "one_by_one"])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--budgets", nargs="+", type=int, default=BUDGETS)
    parser.add_argument("--limit", type=int, default=None, help="samples per configuration (default: all 9)")
    parser.add_argument("--bench", nargs="+", default=BENCH, help="Hydra overrides choosing the samples")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "perf")
    parser.add_argument("--reuse", type=Path, default=None, help="folder of leg JSON files measured earlier")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_leg(args.worker, args.methods, args.budgets, args.limit, args.bench, args.worker_out)
        return
    legs_dir = args.out / "sweep_legs"
    results = {}
    if args.reuse is not None:
        for path in sorted(args.reuse.glob("*.json")):
            results[path.stem] = json.loads(path.read_text())
    for leg in args.legs:
        out_json = legs_dir / f"{leg}.json"
        cmd = [sys.executable, __file__, "--worker", leg, "--worker-out", str(out_json)]
        cmd += ["--methods", *args.methods, "--budgets", *map(str, args.budgets), "--bench", *args.bench]
        if args.limit is not None:
            cmd += ["--limit", str(args.limit)]
        subprocess.run(cmd, check=True, cwd=ROOT)
        results[leg] = json.loads(out_json.read_text())
    write_csv(results, args.out / "sweep.csv")


def write_csv(results: dict[str, dict], path: Path) -> None:
    full = results.get("full", {}).get("wall_seconds")
    one = results.get("one_by_one", {}).get("wall_seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for leg in ("full", "sweep", "one_by_one"):
            if leg not in results:
                continue
            row = dict(results[leg])
            row["wall_vs_full"] = round(row["wall_seconds"] / full, 2) if full else ""
            row["one_by_one_vs_leg"] = round(one / row["wall_seconds"], 2) if one else ""
            writer.writerow(row)
    print(path.read_text())


if __name__ == "__main__":
    main()
