"""What a fidelity sample costs per configuration, against a NIAH sample of the same prompt length.

The rule fidelity is held to: being teacher-forced (no decoding loop), a sample should cost less per
configuration than one NIAH sample. Both benchmarks run here, side by side in one process, through the real
commands (``eval.runner.run``), each leg in a fresh output folder so nothing resumes:

- ``single``: one configuration (``--single``, default ``lava`` at budget 128), one run per benchmark;
- ``sweep``: every method x ``--budgets`` in one sweep (one prefill per sample, batched decoding /
  batched teacher forcing).

Per leg the cost is the wall time of the sample loop (``samples_seconds``: model loaded, nothing
else) divided by samples x configurations. The legs of one length alternate NIAH / fidelity, in
reverse order on odd repeats; the CSV holds the median over ``--repeats``. NIAH lengths are offset
(``--niah-offset``) so that its prompts (needle, question and template included) are about as long
as fidelity's contexts; the measured prompt tokens are in the table. Fidelity runs once per
``--continuation-tokens`` value (its ``m``: the teacher-forced positions, 64 by default in
``bench=fidelity``). NIAH runs once per ``--niah-min-new`` value: upstream's 0 (SmolLM2 ends most
answers at once) and 1 (the CPU profile's).

    make bench-fidelity-cost        # lengths 1024 2048, m 32 64, 4 repeats: results/perf/ (~30 min, 2 cores)
    python scripts/bench_fidelity_cost.py --lengths 512 --repeats 1 --budgets 64 --continuation-tokens 64 --out /tmp/cost
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bench_overrides(bench: str, length: int, args: argparse.Namespace, setting: int) -> list[str]:
    """Hydra overrides choosing one benchmark's samples at (about) ``length`` prompt tokens.

    ``setting`` is fidelity's ``continuation_tokens`` or NIAH's ``min_new_tokens``.
    """
    if bench == "fidelity":
        return [
            "bench=fidelity",
            f"bench.lengths=[{length}]",
            f"bench.samples_per_source={args.fidelity_samples}",
            f"bench.continuation_tokens={setting}",
        ]
    depths = ",".join(str(round(100 * i / max(args.niah_samples - 1, 1))) for i in range(args.niah_samples))
    return [
        "bench=niah",
        f"bench.lengths=[{length + args.niah_offset}]",
        f"bench.depths=[{depths}]",
        f"bench.min_new_tokens={setting}",
    ]


def run_leg(bench_args: list[str], mode: str, args: argparse.Namespace) -> dict:
    """One leg in this process: a single run or a sweep; its per-configuration cost."""
    import json

    from eval.compose import compose_config
    from eval.runner import run

    root = Path(tempfile.mkdtemp(prefix=f"fidelity-cost-{mode}-"))
    common = [*bench_args, f"output_root={root}", "progress=false"]
    if mode == "single":
        name, budget = args.single
        summary = run(compose_config([*common, f"method={name}", f"budget={budget}"]))
        runs, samples_seconds = [summary], summary.samples_seconds
    else:
        budgets = ",".join(map(str, args.budgets))
        summary = run(compose_config([*common, "methods=all", f"budgets=[{budgets}]"]))
        runs, samples_seconds = summary.runs, summary.samples_seconds
    records = [json.loads(line) for line in (runs[0].run_dir / "predictions.jsonl").read_text().splitlines()]
    samples = len(records)
    return {
        "configurations": len(runs),
        "samples": samples,
        "samples_seconds": samples_seconds,
        "seconds_per_configuration": samples_seconds / (samples * len(runs)),
        "prompt_tokens": statistics.mean(r["prompt_tokens"] for r in records),
        "new_tokens": statistics.mean(r["new_tokens"] for r in records),
    }


@functools.cache
def _model() -> Any:
    from eval.compose import compose_config
    from lava.models import as_spec, load_model, load_tokenizer

    spec = as_spec(compose_config([]).model)
    return load_model(spec, load_tokenizer(spec))[0]


@functools.cache
def forward_seconds(rows: int, m: int, repeats: int = 3) -> float:
    """Median wall time of one ``rows x m``-token forward of the configured model with no cache.

    With no prompt in the cache this is the linear layers (and the m x m attention) of ``rows``
    teacher-forced continuations: what any fidelity measurement must pay on top of the prefill.
    """
    import time

    import torch

    model = _model()
    ids = torch.randint(0, 1000, (rows, m))
    times = []
    with torch.inference_mode():
        model(input_ids=ids[:1], use_cache=False)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def floor_rows(table, args: argparse.Namespace, niah_min_new: int) -> list[dict]:
    """A lower bound on fidelity's cost per configuration, from measured parts.

    Whatever the attention and metric code do, a fidelity sample pays what a NIAH sample that answers
    with its first token pays (prefill, compression, records: the ``min_new_tokens=0`` leg, ~1 token)
    plus the teacher-forced forwards' linear layers: the full cache's reference (1 row) and one row
    per compressed configuration (the full method's own row not counted).
    """
    from eval.compose import compose_config

    max_batch = int(compose_config([]).max_decode_batch)  # the sweep batches its teacher forcing so
    out = []
    for (length, mode), group in table.groupby(["length", "mode"], sort=False):
        niah = group[group.benchmark == f"niah (min_new_tokens={niah_min_new})"]
        if niah.empty:
            continue
        configurations = int(niah.configurations.iloc[0])
        compressed = configurations if mode == "single" else configurations - 1
        for m in args.continuation_tokens:
            batch = min(compressed, max_batch)
            forwards = forward_seconds(1, m) + -(-compressed // batch) * forward_seconds(batch, m)
            out.append(
                {
                    "length": length,
                    "mode": mode,
                    "benchmark": f"floor (m={m})",
                    "configurations": configurations,
                    "seconds_per_configuration": float(niah.seconds_per_configuration.iloc[0])
                    + forwards / configurations,
                }
            )
    return out


def paired_ratios(frame, niah: str):
    """Per fidelity leg: median, min and max over repeats of its cost over ``niah``'s in the same repeat."""
    import pandas as pd

    base = frame[frame.benchmark == niah].set_index(["length", "mode", "repeat"])["seconds_per_configuration"]
    rows = []
    fidelity = frame[frame.benchmark.str.startswith("fidelity")]
    for (length, mode, benchmark), group in fidelity.groupby(["length", "mode", "benchmark"], sort=False):
        values = [r.seconds_per_configuration / base[(length, mode, r.repeat)] for r in group.itertuples()]
        rows.append(
            {
                "length": length,
                "mode": mode,
                "benchmark": benchmark,
                "paired_median": statistics.median(values),
                "paired_min": min(values),
                "paired_max": max(values),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument("--modes", nargs="+", default=["single", "sweep"], choices=["single", "sweep"])
    parser.add_argument("--single", nargs=2, default=["lava", "128"], metavar=("METHOD", "BUDGET"))
    parser.add_argument("--budgets", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--fidelity-samples", type=int, default=3, help="windows per source (x2 sources)")
    parser.add_argument(
        "--continuation-tokens", nargs="+", type=int, default=[32, 64], help="fidelity's m, one leg each"
    )
    parser.add_argument("--niah-samples", type=int, default=5, help="depths, evenly from 0 to 100")
    parser.add_argument("--niah-offset", type=int, default=161, help="NIAH length - fidelity length")
    parser.add_argument("--niah-min-new", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "perf")
    args = parser.parse_args()

    import pandas as pd
    from tqdm.auto import tqdm

    from eval.frames import write_frame

    legs = [("fidelity", m) for m in args.continuation_tokens] + [("niah", k) for k in args.niah_min_new]
    plan = [
        (length, mode, repeat, leg)
        for length in args.lengths
        for repeat in range(args.repeats)
        for mode in args.modes
        for leg in (legs if repeat % 2 == 0 else legs[::-1])
    ]
    raw = []
    for length, mode, repeat, (bench, setting) in tqdm(plan, desc="fidelity cost legs", unit="leg"):
        result = run_leg(bench_overrides(bench, length, args, setting), mode, args)
        label = f"fidelity (m={setting})" if bench == "fidelity" else f"niah (min_new_tokens={setting})"
        raw.append({"length": length, "mode": mode, "benchmark": label, "repeat": repeat, **result})
    frame = pd.DataFrame(raw)
    keys = ["length", "mode", "benchmark"]
    table = frame.groupby(keys, sort=False).median(numeric_only=True).drop(columns="repeat").reset_index()
    table[["configurations", "samples"]] = table[["configurations", "samples"]].astype(int)
    if 0 in args.niah_min_new:
        table = pd.concat([table, pd.DataFrame(floor_rows(table, args, 0))], ignore_index=True)
        table["configurations"] = table["configurations"].astype(int)
        table["samples"] = [("" if pd.isna(v) else int(v)) for v in table["samples"]]  # none for a floor
    cost = table.set_index(keys)["seconds_per_configuration"]
    for k in args.niah_min_new:  # fidelity rows: their cost over this NIAH variant's, same length and mode
        niah = f"niah (min_new_tokens={k})"
        table[f"vs_niah_min_new_{k}"] = [
            cost[(r.length, r.mode, r.benchmark)] / cost[(r.length, r.mode, niah)]
            if r.benchmark.startswith(("fidelity", "floor"))
            else float("nan")
            for r in table.itertuples()
        ]
    # Paired within a repeat (legs run next to each other), so a slow spell of the machine cancels.
    ratios = paired_ratios(frame, f"niah (min_new_tokens={max(args.niah_min_new)})")
    table = table.merge(ratios, on=keys, how="left")
    header = [
        "Fidelity vs NIAH: per-configuration cost of one sample (scripts/bench_fidelity_cost.py)",
        "seconds_per_configuration = sample-loop wall time / (samples x configurations), "
        f"median of {args.repeats} repeats.",
        f"single = {args.single[0]} at budget {args.single[1]}; sweep = all methods x budgets {args.budgets}.",
        "vs_niah_min_new_k < 1: a fidelity sample costs less per configuration than a NIAH sample.",
        "paired_*: the same ratio against the last NIAH variant, taken per repeat (its legs run side by "
        "side), median / min / max over repeats.",
        "floor (m): NIAH's min_new_tokens=0 cost plus the teacher-forced forwards' linear layers "
        "(reference + one row per compressed configuration, no cache): no fidelity code can cost less.",
        f"CPU threads: {os.cpu_count()}; load average at the end: {os.getloadavg()[0]:.2f}.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_frame(frame, args.out / "fidelity_cost_raw", index=False, header=header, digits=3)
    paths = write_frame(table, args.out / "fidelity_cost", index=False, header=header, digits=3)
    print((args.out / "fidelity_cost.md").read_text())
    print("wrote", *map(str, paths))


if __name__ == "__main__":
    main()
