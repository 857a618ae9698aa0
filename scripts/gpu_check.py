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
   512, 128: full cache, full@budget, snapkv, pyramidkv, adakv, cake, cake_cascading, lava; each
   warmed up, its decode timed 3 times in rounds interleaved with the others (median, min, max).

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
    attention_iters=50, attention_batches=[1, 9, 27], perf_prompt=32768, perf_budgets=[2048, 512, 128], decode_steps=64,
    warmup_prompt=1024, decode_repeats=3, prefill_repeats=3,
)  # fmt: skip
SMALL_SIZES = dict(
    token_prompt=96, new_tokens=8, kept_prompt=160, kept_budgets=[64],
    attention_shapes=[("tiny@48", 4, 2, 16, 48, 3), ("odd-group@20", 6, 2, 8, 20, 2)],
    attention_iters=3, attention_batches=[1, 3], perf_prompt=512, perf_budgets=[128, 64], decode_steps=4,
    warmup_prompt=192, decode_repeats=2, prefill_repeats=2,
)  # fmt: skip
# Estimated seconds of each phase on one H200 (docs/gpu.md explains them). A phase starts only if its
# estimate fits in what is left. Speed grid steps, per kind (full, ceiling = full@budget, method):
# `prepare` = cache, timed prefill and untimed full-size decode; `decode` = one timed decode; `prefill` =
# one more timed prefill; each replaced by 1.25 x the longest measured one of its kind once there is one.
H200_ESTIMATE_S = dict(
    setup=15, token_identity=60, kept_entries=45, attention=15, sweep=165, perf_model=25, activations=5, warmup=10,
    full_prepare=8, full_decode=5, ceiling_prepare=2, ceiling_decode=1.5, ceiling_prefill=0.5,
    method_prepare=6, method_decode=2, method_prefill=4,
)  # fmt: skip
CPU_SMALL_ESTIMATE_S = dict(
    setup=5, token_identity=15, kept_entries=5, attention=3, sweep=60, perf_model=1, activations=1, warmup=2,
    full_prepare=1, full_decode=1, ceiling_prepare=1, ceiling_decode=1, ceiling_prefill=1,
    method_prepare=1, method_decode=1, method_prefill=1,
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
        default=["tokens", "kept", "attention", "sweep", "perf"],
        choices=["tokens", "kept", "attention", "sweep", "perf"],
        help="phases to run (default all)",
    )
    p.add_argument(
        "--perf-methods",
        nargs="+",
        default=None,
        help="methods of the speed grid (default eval.gpu_check.methods.PERF_METHODS)",
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
    if device == "cpu" and not args.small and {"perf", "sweep"} & set(args.phases):
        print("error: the speed and sweep phases build an 8B model (16 GB); on a CPU add --small, or leave "
              "perf and sweep out of --phases", file=sys.stderr)  # fmt: skip
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
        from eval.gpu_check.attention_paths import batched_padded_timings, check_paths

        def attention() -> None:
            results["attention"] = check_paths(
                sizes["attention_shapes"], device, [torch.float32, torch.bfloat16], sizes["attention_iters"]
            )
            results["attention_batched"] = batched_padded_timings(
                sizes["attention_shapes"][0], device, torch.bfloat16, sizes["attention_batches"],
                sizes["attention_iters"])  # fmt: skip

        phase("attention", "decode attention paths", attention)
    if "sweep" in args.phases:  # before the speed grid: it runs whole or not at all, the grid degrades
        from eval.gpu_check import sweep as sweep_phase

        def run_sweep() -> None:
            small = args.small
            result = sweep_phase.run_sweep_phase(
                sweep_phase.SMALL_SIZES if small else sweep_phase.FULL_SIZES, device, clock,
                sweep_phase.CPU_SMALL_ESTIMATE_S if small else sweep_phase.H200_ESTIMATE_S)  # fmt: skip
            results["sweep_phase"] = result
            results["sweep"] = result["rows"]
            results["errors"] += result["errors"]

        phase("sweep", "sweep phase: run.py sweep against a single full run", run_sweep)
    if "perf" in args.phases:
        t0 = time.perf_counter()
        run_perf(args, sizes, estimate, device, clock, results, save)
        results["meta"].setdefault("phase_s", {})["perf"] = round(time.perf_counter() - t0, 2)
    save()
    print(report.summary(results))
    print(f"[gpu-check] wrote {out} in {clock.elapsed():.1f} s", flush=True)
    return 0


def perf_groups(methods: list[str], budgets: list[int]) -> list[list[tuple[str, int | None]]]:
    """The speed grid's configurations in groups, by importance: ``full`` with the largest budget's
    (``full@budget``, then each method), then each smaller budget's. A group's configurations are
    prefilled together and their decodes timed in interleaved rounds."""
    from eval.gpu_check.perf import CEILING, FULL

    order = sorted(budgets, reverse=True)
    groups = [[(CEILING, b)] + [(m, b) for m in methods] for b in order]
    groups[0].insert(0, (FULL, None))
    return groups


def run_perf(args, sizes: dict, estimate: dict, device: str, clock, results: dict, save) -> None:
    """Speed and memory grid (docs/gpu.md, "The time budget"): the 8B-shaped model, then
    :func:`speed_grid` with the garbage collector's view of everything that exists before it frozen."""
    import gc

    import torch

    from eval.gpu_check.models import LLAMA_8B, TINY, random_llama
    from eval.gpu_check.perf import release

    if not clock.fits("speed model (random-weight Llama-3.1-8B shape)", estimate["perf_model"]):
        return
    shape, dtype = (TINY, torch.float32) if args.small else (LLAMA_8B, torch.bfloat16)
    model = random_llama(shape, dtype, device)
    results["meta"]["perf_model"] = (
        f"random weights, {'tiny' if args.small else 'Llama-3.1-8B'} shape, {str(dtype).removeprefix('torch.')}"
    )
    ids = torch.randint(
        0, shape["vocab_size"], (1, sizes["perf_prompt"]), generator=torch.Generator().manual_seed(2)
    )
    # Memory is read after a full collection (dropped caches hold reference cycles); with the model, torch
    # and transformers frozen out of the collector's view one takes microseconds instead of ~0.1 s.
    gc.collect()
    gc.freeze()
    try:
        speed_grid(model, ids.to(device), args.perf_methods, sizes, estimate, clock, results, save)
    finally:
        gc.unfreeze()
        del model
        release(torch.device(device))


def speed_grid(model, ids, methods, sizes: dict, estimate: dict, clock, results: dict, save) -> None:
    """Warm-ups, then per group of configurations (:func:`perf_groups`) one timed prefill and one
    untimed decode each, ``decode_repeats`` rounds that time every configuration's decode once, and
    more prefills of the acceptance rows; ``results["perf"]`` is rewritten after each step."""
    import torch

    from eval.gpu_check.methods import PERF_METHODS
    from eval.gpu_check.perf import (
        CEILING,
        FULL,
        Measured,
        activation_bytes,
        add_ratios,
        decode,
        prefill,
        release,
    )
    from eval.gpu_check.tokens import decode_path

    model_name = "llama-3.1-8b-instruct"
    dev, dtype = ids.device, model.dtype
    weights = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else float("nan")
    prompt, steps, budgets = ids.shape[1], sizes["decode_steps"], sizes["perf_budgets"]
    methods = methods or PERF_METHODS
    groups = perf_groups(methods, budgets)
    top = max(budgets)
    # The rows the acceptance reads get prefill_repeats timed prefills; every row gets decode_repeats decodes.
    accept = [(CEILING, top)] + [(m, top) for m in ("adakv", "lava") if m in methods]
    meta = {
        "prompt_tokens": prompt,
        "decode_steps": steps,
        "weights_bytes": weights,
        "activation_bytes": float("nan"),
        "decode_path": decode_path(dev),
        "protocol": {
            "kernel_warmup": f"each configuration once on the prompt's first {sizes['warmup_prompt']} tokens "
            f"at budget {min(budgets)}, 2 decode steps (untimed); the uncached prefill warms the full length",
            "per_group": "configurations of one budget (the first group with full) are prefilled one after "
            "the other (1 timed prefill each) and decoded once untimed at full size (the warm-up, "
            "shown as warmup_tok_s); their caches stay alive",
            "rounds": f"{sizes['decode_repeats']} rounds; round r times every configuration of the group "
            "once, in grid order; each decode starts from the prefill's first token and is rewound "
            "with cache.crop afterwards",
            "prefill_repeats": f"{sizes['prefill_repeats']} timed prefills (fresh caches, dropped) for "
            f"{', '.join(f'{n}@{b}' for n, b in accept)}, one after each round but the last",
            "reported": "median with min and max over the timed runs; decode_vs_ceiling = median / "
            "the same budget's full@budget median",
            "memory": "peak = weights + the configuration's own peak above what everything else held "
            "(the weights, the other live caches), the largest of its prefills and decodes",
        },
    }
    results["perf_meta"] = meta
    if clock.fits("uncached prefill (activations; warms the prompt length)", estimate["activations"]):
        meta["activation_bytes"] = activation_bytes(model, ids)
    measured = {key: Measured(key[0], key[1], steps) for group in groups for key in group}

    def refresh() -> None:
        rows = [m.row(weights) for m in measured.values() if m.prefills or m.errors]
        add_ratios(rows, weights, meta["activation_bytes"], model.config, dtype)
        results["perf"] = rows
        save()

    def failed(key, what: str, exc: Exception) -> None:
        text = f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        measured[key].errors.append(text)
        results["errors"].append(f"perf {key[0]} @ {key[1] or '-'} {text}")

    if clock.fits("kernel warm-up of each configuration at a short prompt", estimate["warmup"]):
        short = ids[:, : sizes["warmup_prompt"]]
        for name in [FULL, CEILING, *methods]:
            try:
                state, _ = prefill(model, model_name, short, name, min(budgets), 2)
                decode(model, state, 2)
            except Exception:  # the grid records the error on the configuration's row
                pass
            state = None
    seconds: dict[str, float] = {}  # longest measured duration of each (step, kind)

    def timed(key, step: str, what: str, fn) -> object:
        """``fn()`` if its estimate fits (1.25 x the longest of its kind once measured), else None."""
        kind = "full" if key[0] == FULL else ("ceiling" if key[0] == CEILING else "method")
        slot = f"{kind}_{step}"
        guess = 1.25 * seconds[slot] if slot in seconds else estimate[slot]
        if not clock.fits(f"perf {key[0]} @ {key[1] or '-'}: {what}", guess):
            return None
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:
            failed(key, what, exc)
            return None
        seconds[slot] = max(seconds.get(slot, 0.0), time.perf_counter() - t0)
        return out

    for group in groups:
        live = {}
        for key in group:
            if measured[key].errors:
                continue

            def prepare(key=key):
                state, stats = prefill(model, model_name, ids, key[0], key[1], steps)
                measured[key].prefills.append(stats)
                measured[key].warmup = decode(model, state, steps)
                return state

            state = timed(key, "prepare", "prefill and warm-up decode", prepare)
            if state is not None:
                live[key] = state
                m = measured[key].row(weights)
                print(f"[gpu-check] perf {key[0]} @ {key[1] or '-'}: prefill {m['prefill_s']:.3f} s, warm-up "
                      f"decode {m['warmup_tok_s']:.1f} tok/s", flush=True)  # fmt: skip
            refresh()
        for r in range(1, sizes["decode_repeats"] + 1):
            for key, state in list(live.items()):
                out = timed(
                    key, "decode", f"decode round {r}", lambda state=state: decode(model, state, steps)
                )
                if out is not None:
                    measured[key].decodes.append(out)
                    print(f"[gpu-check] perf {key[0]} @ {key[1] or '-'} round {r}: decode {out['tok_s']:.1f} tok/s",
                          flush=True)  # fmt: skip
                elif measured[key].errors:
                    del live[key]  # a failed decode leaves its cache in an unknown state
            if r < sizes["prefill_repeats"]:
                for key in [k for k in accept if k in live]:
                    out = timed(key, "prefill", f"prefill {r + 1}", lambda key=key: prefill(
                        model, model_name, ids, key[0], key[1], steps)[1])  # fmt: skip
                    if out is not None:
                        measured[key].prefills.append(out)
            refresh()
        live.clear()
        state = None  # the group's last cache too: the next group's baselines hold only the weights
        release(dev)
    refresh()


if __name__ == "__main__":
    sys.exit(main())
