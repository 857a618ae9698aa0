"""samples -> prompt -> prefill (+ compression) -> decode -> predictions.jsonl -> scores.json.

A run folder is identified by the model, method, benchmark, budget and seed (a hash of their resolved
config), so rerunning the same command resumes it: finished samples are read back from
``predictions.jsonl`` and skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from eval import checks
from eval.benchmarks.base import Benchmark, PromptContext, Sample
from eval.generation import greedy_generate
from eval.method_configs import build_method, build_node, canonical, is_full
from eval.perf.memory import kv_size
from eval.provenance import git_commit, package_versions, peak_memory
from eval.records import RecordWriter, load_records, write_json_atomic
from eval.sample_loop import SampleLoop
from lava.errors import UserError
from lava.models import ModelSpec, as_spec

IDENTITY_KEYS = ("model", "method", "bench", "budget", "seed")


@dataclass
class RunSummary:
    run_dir: Path
    score: float
    headline_metric: str
    num_samples: int
    new_samples: int
    elapsed_seconds: float
    generated_tokens: int
    paths: list[Path] = field(default_factory=list)
    # Wall time of the sample loop alone (model loaded, folders open): what the new samples cost.
    samples_seconds: float = math.nan
    # On CUDA: device name, weights, peak since the model loaded (eval.device_memory); None elsewhere.
    device_memory: dict[str, Any] | None = None


def validate(cfg: DictConfig) -> None:
    """One-line errors for values Hydra's schema-less config cannot check."""
    budget = cfg.get("budget")
    full = isinstance(cfg.get("method"), DictConfig) and is_full(cfg.method)
    if not full and (not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0):
        raise UserError(
            f"budget={budget} is invalid; give a positive integer (entries per KV head per layer)"
        )
    limit = cfg.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise UserError(f"limit={limit} is invalid; give a non-negative integer or null")
    shards, shard = cfg.get("num_shards", 1), cfg.get("shard", 0)
    if not isinstance(shards, int) or shards < 1 or not isinstance(shard, int) or not 0 <= shard < shards:
        raise UserError(f"shard={shard} num_shards={shards} is invalid; need 0 <= shard < num_shards")
    for group in ("model", "method", "bench"):
        if not isinstance(cfg.get(group), DictConfig) or "name" not in cfg[group]:
            raise UserError(
                f"config group '{group}' is missing or has no 'name'; pick one with {group}=<name>"
            )
    checks.check_config(cfg)


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What identifies a run: :data:`IDENTITY_KEYS`, without the budget for the full cache."""
    keys = [k for k in IDENTITY_KEYS if not (k == "budget" and is_full(cfg.method))]
    return {
        k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
        for k in keys
    }


def run_dir_for(cfg: DictConfig) -> Path:
    """``<output_root>/<model>/<bench>/<method>-b<budget>-<hash>`` (``full-<hash>`` for the full cache);
    the hash covers :func:`run_identity`."""
    identity = json.dumps(run_identity(cfg), sort_keys=True, default=str)
    digest = hashlib.sha1(identity.encode()).hexdigest()[:8]
    shard = f"-shard{cfg.shard}of{cfg.num_shards}" if cfg.get("num_shards", 1) > 1 else ""
    budget = "" if is_full(cfg.method) else f"-b{cfg.budget}"
    return (
        Path(cfg.output_root) / cfg.model.name / cfg.bench.name / f"{cfg.method.name}{budget}-{digest}{shard}"
    )


def build_benchmark(cfg: DictConfig) -> Benchmark:
    bench = build_node(cfg.bench, "bench")
    if not isinstance(bench, Benchmark):
        raise UserError(f"bench {cfg.bench.name!r} does not build a Benchmark; check its _target_")
    return bench


def build_prompt_ids(sample: Sample, tokenizer: Any, spec: ModelSpec) -> list[int]:
    """Chat-wrap (when both the sample and the model allow it), append the answer prefix, tokenize."""
    if sample.chat and spec.chat_template and tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": sample.prompt}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer.encode(text + sample.answer_prefix, add_special_tokens=False)
    return tokenizer.encode(sample.prompt + sample.answer_prefix, add_special_tokens=True)


def build_generation_cache(method: Any, model: Any, max_new_tokens: int) -> Any:
    """The cache one generation fills: the method's compressing cache, or a plain DynamicCache."""
    if method is not None and hasattr(method, "build_cache"):
        return method.build_cache(model, max_new_tokens=max_new_tokens)
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def run(cfg: DictConfig) -> Any:
    """Run (or resume) one configuration and write its run folder; with ``methods=`` set, a sweep
    (:func:`eval.sweep.run_sweep`)."""
    if cfg.get("methods") is not None:
        from eval.sweep import run_sweep

        return run_sweep(cfg)
    t_start = time.perf_counter()
    validate(cfg)
    cfg = canonical(cfg)
    spec = as_spec(cfg.model)
    bench = build_benchmark(cfg)
    method = build_method(cfg)
    run_dir = run_dir_for(cfg)
    predictions_path = run_dir / "predictions.jsonl"
    done = read_done(predictions_path)

    loop = SampleLoop(cfg, bench, spec)
    samples = loop.samples
    ids = [s.id for s in samples]
    done_ids = {r["id"] for r in done}
    todo = [s for s in samples if s.id not in done_ids]
    model = loop.load_model()

    open_run_folder(run_dir, cfg, method)
    new_records: list[dict[str, Any]] = []
    bar = loop.progress(todo, f"{bench.name}/{cfg.method.name}")
    t_samples = time.perf_counter()
    with RecordWriter(predictions_path) as writer:
        for sample in bar:
            prompt_ids, stops, input_ids = loop.inputs(sample)
            # --- teacher-forced benchmarks (fidelity): scored in one prefill and two forwards, no decoding
            if getattr(bench, "teacher_forced", False):
                record = bench.run_sample(
                    model, build_generation_cache(method, model, sample.max_new_tokens), prompt_ids, sample
                )
                writer.write(record)
                new_records.append(record)
                continue
            # --- end teacher-forced
            cache = build_generation_cache(method, model, sample.max_new_tokens)
            gen = greedy_generate(
                model,
                input_ids,
                max_new_tokens=sample.max_new_tokens,
                stop_ids=stops,
                cache=cache,
                min_new_tokens=loop.min_new,
            )
            timings = getattr(cache, "timings", {})
            phases = {
                "prefill_seconds": gen.prefill_seconds,
                "scoring_seconds": timings.get("scoring", 0.0),
                "allocation_seconds": timings.get("allocation", 0.0),
                "decode_seconds": gen.decode_seconds,
            }
            record = make_record(sample, bench, loop.tokenizer, prompt_ids, gen, cache, phases)
            writer.write(record)
            new_records.append(record)
            bar.set_postfix({bench.headline_metric(): f"{record['scores'][bench.headline_metric()]:.2f}"})
    bar.close()
    samples_seconds = {"samples_seconds": round(time.perf_counter() - t_samples, 3)}
    by_id = {r["id"]: r for r in done + new_records}
    records = [by_id[i] for i in ids if i in by_id]
    return finish_run(
        run_dir,
        cfg,
        bench,
        records,
        new_records,
        time.perf_counter() - t_start,
        str(loop.device),
        samples_seconds,
        loop.device_memory(),
    )


def read_done(predictions_path: Path) -> list[dict[str, Any]]:
    """Finished records of a run folder (a torn last line repaired and reported)."""
    done, notes = load_records(predictions_path)
    for note in notes:
        print(f"[lava] recovered: {note}")
    return done


def load_samples(cfg: DictConfig, bench: Benchmark, tokenizer: Any, spec: ModelSpec) -> list[Sample]:
    """The run's samples (this shard's, at most ``limit``), before any model weights are loaded."""
    ctx = PromptContext(
        tokenizer=tokenizer,
        model_name=spec.name,
        max_prompt_tokens=spec.max_prompt_tokens,
        seed=cfg.seed,
        chat_template=spec.chat_template,
    )
    checks.check_prompt_lengths(bench, ctx, spec.max_context, cfg)  # before generating any sample
    samples = list(bench.samples(ctx))
    if cfg.num_shards > 1:
        samples = samples[cfg.shard :: cfg.num_shards]
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise UserError(f"bench {bench.name} produced duplicate sample ids; its ids must be unique")
    return samples


def min_new_tokens(bench: Benchmark, cfg: DictConfig) -> int:
    """The benchmark's ``min_new_tokens`` (older benchmarks: the top-level config key)."""
    return int(getattr(bench, "min_new_tokens", cfg.get("min_new_tokens", 1)))


def open_run_folder(run_dir: Path, cfg: DictConfig, method: Any) -> None:
    """Create the folder and write what defines the run (``config.yaml``, ``method.json``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    describe = getattr(method, "describe", None)
    write_json_atomic(
        run_dir / "method.json", describe() if callable(describe) else {"name": cfg.method.name}
    )


class LengthWarning:
    """Warns once when a prompt plus its generation exceeds the model's context."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec, self.warned = spec, False

    def check(self, sample: Sample, prompt_ids: list[int]) -> None:
        if not self.warned and len(prompt_ids) + sample.max_new_tokens > self.spec.max_context:
            self.warned = True
            tqdm.write(
                f"[lava] warning: {sample.id} needs {len(prompt_ids)}+{sample.max_new_tokens} tokens, "
                f"beyond model.max_context={self.spec.max_context}"
            )


def make_record(
    sample: Sample,
    bench: Benchmark,
    tokenizer: Any,
    prompt_ids: list[int],
    gen: Any,
    cache: Any,
    phases: dict[str, float],
) -> dict[str, Any]:
    """One line of ``predictions.jsonl``: the prediction, what the cache kept, timings, scores."""
    record = {
        "id": sample.id,
        "task": sample.task,
        "prediction": tokenizer.decode(gen.token_ids, skip_special_tokens=True),
        "references": sample.references,
        "meta": sample.meta,
        "prompt_tokens": len(prompt_ids),
        "new_tokens": len(gen.token_ids),
        "stop_reason": gen.stop_reason,
        **{name: round(seconds, 4) for name, seconds in phases.items()},
    }
    size = kv_size(cache, len(prompt_ids))
    # a compressing cache records its whole report; a plain one only its bytes (what it keeps is the prompt)
    record.update(size if callable(getattr(cache, "report", None)) else {"cache_bytes": size["cache_bytes"]})
    record["scores"] = bench.score(record)
    return record


PHASES = ("prefill_seconds", "scoring_seconds", "allocation_seconds", "decode_seconds")


def finish_run(
    run_dir: Path,
    cfg: DictConfig,
    bench: Benchmark,
    records: list[dict[str, Any]],
    new_records: list[dict[str, Any]],
    elapsed: float,
    device: str,
    extra_timings: dict[str, Any] | None = None,
    device_memory: dict[str, Any] | None = None,
) -> RunSummary:
    """Write ``scores.json``, the benchmark's artifacts, ``kept_per_head.npy`` and ``run_meta.json``.

    ``records`` are all the run's records in sample order; ``new_records`` those produced now;
    ``device_memory`` the accelerator's figures (:func:`eval.device_memory.device_memory`).
    """
    scores = bench.aggregate(records)
    write_json_atomic(run_dir / "scores.json", scores)
    artifacts = bench.write_artifacts(run_dir, records)
    kept_path = _write_kept_array(run_dir, records)
    if kept_path is not None:
        artifacts.append(kept_path)
    gen_tokens = sum(r["new_tokens"] for r in new_records)
    timings = {
        "elapsed_seconds": round(elapsed, 2),
        **{p: round(sum(r.get(p, 0.0) for r in new_records), 3) for p in PHASES},
        "new_samples": len(new_records),
        "generated_tokens": gen_tokens,
        **(extra_timings or {}),
    }
    meta = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": package_versions(),
        "git": git_commit(),
        "timings": timings,
        "prompt_tokens": {
            "total": sum(r["prompt_tokens"] for r in records),
            "max": max((r["prompt_tokens"] for r in records), default=0),
        },
        "memory": peak_memory(),
        "device": device,
        "device_memory": device_memory,
    }
    write_json_atomic(run_dir / "run_meta.json", meta)
    return RunSummary(
        run_dir=run_dir,
        score=float(scores.get("score", math.nan)),
        headline_metric=scores.get("headline_metric", bench.headline_metric()),
        num_samples=len(records),
        new_samples=len(new_records),
        elapsed_seconds=elapsed,
        generated_tokens=gen_tokens,
        samples_seconds=float(timings.get("samples_seconds", timings.get("sweep_samples_seconds", math.nan))),
        device_memory=device_memory,
        paths=[run_dir / "predictions.jsonl", run_dir / "scores.json", run_dir / "run_meta.json", *artifacts],
    )


def _write_kept_array(run_dir: Path, records: list[dict[str, Any]]) -> Path | None:
    """``kept_per_head.npy``: entries kept per (sample, layer, KV head), for the budget plots."""
    import numpy as np

    kept = [r["kept_per_head"] for r in records if "kept_per_head" in r]
    if not kept:
        return None
    path = run_dir / "kept_per_head.npy"
    np.save(path, np.asarray(kept, dtype=np.int64))
    return path


def format_summary(summary: Any) -> str:
    if not isinstance(summary, RunSummary):  # a sweep formats itself
        return summary.format()
    decode_rate = summary.generated_tokens / summary.elapsed_seconds if summary.elapsed_seconds else 0.0
    lines = [
        "",
        f"  score ({summary.headline_metric}): {summary.score:.4f}  over {summary.num_samples} samples "
        f"({summary.new_samples} new)",
        f"  elapsed: {summary.elapsed_seconds:.1f} s   generated: {summary.generated_tokens} tokens "
        f"({decode_rate:.1f} tokens/s overall)",
        *memory_lines(summary.device_memory),
        f"  run folder: {summary.run_dir}",
        *[f"    {p}" for p in summary.paths],
    ]
    return "\n".join(lines)


def memory_lines(memory: dict[str, Any] | None) -> list[str]:
    """One line on the accelerator's memory (none on a CPU)."""
    if not memory:
        return []
    gib = 2**30
    return [
        f"  {memory['device_name']}: peak {memory['peak_bytes'] / gib:.2f} GiB, "
        f"{memory['peak_above_weights_bytes'] / gib:.2f} GiB above the weights ({memory['weights_bytes'] / gib:.2f} GiB)"
    ]
