"""The CUDA path in one prepared run (``make gpu-check``): correctness, then speed and memory at 8B scale.

Phases, in order of importance, each started only if its estimated time still fits ``--time-budget``
(what does not fit is skipped and listed in the summary):

1. token identity: with budget >= prompt, every method's greedy tokens equal the full cache's, in
   fp32 and bf16 (embedded SmolLM2 when its weights are here, else random weights of its shape);
2. kept entries: with budget < prompt, the entries kept on the device equal the CPU's for the same
   fp32 inputs, or differ only among equal scores (shown);
3. decode attention: every available path (flash-attn varlen, torch varlen, SDPA, masked matmul)
   against a dense float64 reference (fp32: max abs error 1e-5; bf16: relative error 2e-2), and timed;
4. speed and memory: a random-weight model of Llama-3.1-8B's shape in bf16, prompt 32k, budgets 2048,
   512, 128: full cache, full@budget, snapkv, pyramidkv, adakv, cake, lava.

Outputs in ``--out`` (default results/gpu): token_identity.csv, kept_entries.csv, attention.csv,
perf.csv, gpu_check.json (everything, with the machine and versions) and summary.md. docs/gpu.md has
the device command and the time estimates.

Examples
--------
    python scripts/gpu_check.py                              # on a CUDA machine: the full check
    python scripts/gpu_check.py --device cpu --small         # tiny sizes on a CPU (~30 s; in the test suite)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable as `python scripts/gpu_check.py` from anywhere
    sys.path.insert(0, str(ROOT))

# Sizes of the full check and of --small (seconds on a CPU).
FULL_SIZES = dict(
    token_prompt=1024, new_tokens=32, kept_prompt=2048, kept_budgets=[128, 512],
    attention_shapes=[("llama-8b@2048", 32, 8, 128, 2048, 64), ("smollm2@512", 9, 3, 64, 512, 16)],
    attention_iters=50, perf_prompt=32768, perf_budgets=[2048, 512, 128], decode_steps=64,
)  # fmt: skip
SMALL_SIZES = dict(
    token_prompt=96, new_tokens=8, kept_prompt=160, kept_budgets=[64],
    attention_shapes=[("tiny@48", 4, 2, 16, 48, 3), ("odd-group@20", 6, 2, 8, 20, 2)],
    attention_iters=3, perf_prompt=512, perf_budgets=[128, 64], decode_steps=4,
)  # fmt: skip
# Estimated seconds of each phase on one H200 (docs/gpu.md explains them). A phase starts only if its
# estimate fits in what is left; a perf run's estimate is replaced by the longest measured one of its kind.
H200_ESTIMATE_S = dict(
    setup=15, token_identity=60, kept_entries=45, attention=15, perf_model=25, activations=5, warmup=20,
    full=8, ceiling=3, method=6,
)  # fmt: skip
CPU_SMALL_ESTIMATE_S = dict(
    setup=5, token_identity=15, kept_entries=5, attention=3, perf_model=1, activations=1, warmup=2,
    full=1, ceiling=1, method=1,
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument(
        "--small", action="store_true", help="tiny models and sizes: the CPU smoke run of the test suite"
    )
    p.add_argument("--out", default="results/gpu", help="output folder (relative to the repository root)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=540.0,
        help="seconds the whole run may take; phases that would not fit are skipped (default 540)",
    )
    p.add_argument(
        "--model",
        default="auto",
        choices=["auto", "embedded", "random"],
        help="correctness model: embedded SmolLM2, random weights of its shape, or auto (embedded if present)",
    )
    p.add_argument(
        "--phases",
        nargs="+",
        default=["tokens", "kept", "attention", "perf"],
        choices=["tokens", "kept", "attention", "perf"],
        help="phases to run (default all)",
    )
    p.add_argument(
        "--perf-methods", nargs="+", default=None, help="methods of the speed grid (default the issue's five)"
    )
    p.add_argument(
        "--label", default=None, help="commit or label for the results (default: git HEAD, if any)"
    )
    args = p.parse_args(argv)  # fmt: skip
    return args


def machine(device: str) -> dict:
    import torch
    import transformers

    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    try:
        import flash_attn

        meta["flash_attn"] = flash_attn.__version__
    except ImportError:
        meta["flash_attn"] = "not installed"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(device_name=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count)  # fmt: skip
    else:
        meta["device_name"] = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    return meta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from eval.gpu_check import report
    from eval.gpu_check.clock import Clock
    from eval.provenance import commit_label

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device; use --device cpu --small", file=sys.stderr)
        return 2
    if device not in ("cuda", "cpu"):
        print(f"error: --device {device} is not supported; use cuda or cpu", file=sys.stderr)
        return 2
    if device == "cpu" and not args.small and "perf" in args.phases:
        print("error: the speed phase builds an 8B model (16 GB); on a CPU add --small, or leave perf out of "
              "--phases", file=sys.stderr)  # fmt: skip
        return 2
    # fp32 checks must be fp32: no TF32 in matmuls (PyTorch's default, made explicit).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sizes = SMALL_SIZES if args.small else FULL_SIZES
    estimate = CPU_SMALL_ESTIMATE_S if args.small else H200_ESTIMATE_S
    clock = Clock(args.time_budget)
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    results: dict = {"meta": {**machine(device), "command": "python scripts/gpu_check.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "commit": args.label or commit_label(),
        "time_budget_s": args.time_budget, "device": device, "small": args.small, "sizes": sizes,
        "estimates_s": estimate}, "skipped": clock.skipped, "errors": []}  # fmt: skip

    def save() -> None:
        results["meta"]["wall_s"] = clock.elapsed()
        report.write_all(results, out)

    def phase(key: str, what: str, fn) -> None:
        if not clock.fits(what, estimate[key]):
            return
        t0 = time.perf_counter()
        print(f"[gpu-check] {what} ...", flush=True)
        try:
            fn()
        except Exception as exc:  # recorded; the later phases still run
            import traceback

            traceback.print_exc()
            results["errors"].append(
                f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
        results["meta"].setdefault("phase_s", {})[key] = round(time.perf_counter() - t0, 2)
        save()

    save()
    correctness = {}

    def setup() -> None:
        from eval.gpu_check.models import correctness_model

        correctness["model"] = correctness_model(args.model, args.small)
        results["meta"]["correctness_model"] = correctness["model"].source

    if {"tokens", "kept"} & set(args.phases):
        phase("setup", "load the correctness model", setup)
    if "tokens" in args.phases and "model" in correctness:
        from eval.gpu_check.methods import compressing_methods
        from eval.gpu_check.models import prompt_ids
        from eval.gpu_check.tokens import token_identity

        check = correctness["model"]
        phase("token_identity", "token identity (fp32, bf16)", lambda: results.__setitem__("token_identity",
              token_identity(check.model, check.name, prompt_ids(check, sizes["token_prompt"]), compressing_methods(),
                             device, [torch.float32, torch.bfloat16], sizes["new_tokens"], clock.fits)))  # fmt: skip
    if "kept" in args.phases and "model" in correctness:
        from eval.gpu_check.kept import kept_entries_check
        from eval.gpu_check.methods import compressing_methods
        from eval.gpu_check.models import prompt_ids

        check = correctness["model"]
        phase("kept_entries", "kept entries, device vs CPU", lambda: results.__setitem__("kept_entries",
              kept_entries_check(check.model, check.name, prompt_ids(check, sizes["kept_prompt"], seed=1),
                                 compressing_methods(), sizes["kept_budgets"], device, clock.fits)))  # fmt: skip
    correctness.clear()
    if "attention" in args.phases:
        from eval.gpu_check.attention_paths import check_paths

        phase("attention", "decode attention paths", lambda: results.__setitem__("attention", check_paths(
              sizes["attention_shapes"], device, [torch.float32, torch.bfloat16], sizes["attention_iters"])))  # fmt: skip
    if "perf" in args.phases:
        t0 = time.perf_counter()
        run_perf(args, sizes, estimate, device, clock, results, save)
        results["meta"].setdefault("phase_s", {})["perf"] = round(time.perf_counter() - t0, 2)
    save()
    print(report.summary(results))
    print(f"[gpu-check] wrote {out} in {clock.elapsed():.1f} s", flush=True)
    return 0


def run_perf(args, sizes: dict, estimate: dict, device: str, clock, results: dict, save) -> None:
    """Speed and memory grid: full first, then per budget (largest first) full@budget and each method."""
    import torch

    from eval.gpu_check.methods import PERF_METHODS
    from eval.gpu_check.models import LLAMA_8B, TINY, random_llama
    from eval.gpu_check.perf import CEILING, FULL, activation_bytes, add_ratios, run_generation
    from eval.gpu_check.tokens import decode_path

    if not clock.fits("speed model (random-weight Llama-3.1-8B shape)", estimate["perf_model"]):
        return
    shape, dtype = (TINY, torch.float32) if args.small else (LLAMA_8B, torch.bfloat16)
    model = random_llama(shape, dtype, device)
    model_name = "llama-3.1-8b-instruct"
    dev = torch.device(device)
    weights = torch.cuda.memory_allocated(dev) if device == "cuda" else float("nan")
    results["meta"]["perf_model"] = (
        f"random weights, {'tiny' if args.small else 'Llama-3.1-8B'} shape, {str(dtype).removeprefix('torch.')}"
    )
    prompt = sizes["perf_prompt"]
    ids = torch.randint(0, shape["vocab_size"], (1, prompt), generator=torch.Generator().manual_seed(2)).to(
        dev
    )
    steps = sizes["decode_steps"]
    methods = args.perf_methods or PERF_METHODS
    meta = {
        "prompt_tokens": prompt,
        "decode_steps": steps,
        "weights_bytes": weights,
        "activation_bytes": float("nan"),
        "decode_path": decode_path(dev),
    }
    results["perf_meta"] = meta
    if clock.fits("uncached prefill (activations; warms the prompt length)", estimate["activations"]):
        meta["activation_bytes"] = activation_bytes(model, ids)
    if clock.fits("warm-up of each configuration at a short prompt", estimate["warmup"]):
        short = ids[:, : max(sizes["perf_budgets"]) * 2]
        for name in [FULL, *methods]:
            run_generation(model, model_name, short, name, min(sizes["perf_budgets"]), 2)
    grid = [(FULL, None, 0)] + [(n, b, 0) for b in sizes["perf_budgets"] for n in [CEILING, *methods]]
    # Time left over repeats the acceptance rows (largest budget: full@budget, adakv, lava) in reverse
    # order, so their ratios come with a second measurement.
    top = max(sizes["perf_budgets"])
    grid += [(n, top, 1) for n in reversed([CEILING, *[m for m in ("adakv", "lava") if m in methods]])]
    measured: dict[str, float] = {}
    rows: list[dict] = []
    for name, budget, repeat in grid:
        kind = "full" if name == FULL else ("ceiling" if name == CEILING else "method")
        guess = 1.25 * measured[kind] if kind in measured else estimate[kind]
        if not clock.fits(f"perf {name} @ {budget or '-'} (repeat {repeat})", guess):
            continue
        t0 = time.perf_counter()
        try:
            row = run_generation(model, model_name, ids, name, budget, steps)
        except Exception as exc:
            results["errors"].append(
                f"perf {name} @ {budget}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            )
            continue
        measured[kind] = max(measured.get(kind, 0.0), time.perf_counter() - t0)
        rows.append({**row, "repeat": repeat})
        add_ratios(rows, weights, meta["activation_bytes"], model.config, dtype)
        results["perf"] = rows
        print(f"[gpu-check] perf {name} @ {budget or '-'}: prefill {row['prefill_s']:.3f} s, "
              f"decode {row['decode_tok_s']:.1f} tok/s, peak {row['peak_bytes'] / 2**30:.2f} GiB", flush=True)  # fmt: skip
        save()
    del model


if __name__ == "__main__":
    sys.exit(main())
