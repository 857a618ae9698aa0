"""A run folder: its identity, what it holds, and how it is written and finished.

``<output_root>/<model>/<bench>/<method>-b<budget>-<hash>/`` (``full-<hash>/`` for the full cache),
the hash covering the run's identity (:func:`run_identity`), so rerunning the same configuration
resumes the same folder. It holds ``config.yaml`` and ``method.json`` (what defines the run, written
when it opens), ``predictions.jsonl`` (one record per finished sample, appended as each finishes),
and, when the run finishes, ``scores.json``, the benchmark's artifacts, ``kept_per_head.npy`` and
``run_meta.json``. A single run and a sweep write the same folder for the same configuration.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from eval.benchmarks.base import Benchmark, Sample
from eval.method_configs import is_full
from eval.perf.memory import kv_size
from eval.provenance import git_commit, package_versions, peak_memory
from eval.records import load_records, write_json_atomic

IDENTITY_KEYS = ("model", "method", "bench", "budget", "seed")
# Per-sample phase timings of a record, summed over the new samples into run_meta.json.
PHASES = ("prefill_seconds", "scoring_seconds", "allocation_seconds", "decode_seconds")


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What identifies a run: :data:`IDENTITY_KEYS`, without the budget for the full cache.

    ``bench.question`` enters only when it is ``agnostic``: an ``aware`` run (the only setting before
    the key existed) keeps the identity, hence the folder, it always had, so old folders resume.
    """
    ratio = cfg.get("compression_ratio")
    keys = [k for k in IDENTITY_KEYS if not (k == "budget" and (is_full(cfg.method) or ratio is not None))]
    identity = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
        for k in keys
    }
    if identity["bench"].get("question") == "aware":
        del identity["bench"]["question"]
    if ratio is not None:  # only then: budget runs keep the identity they had before the key existed
        identity["compression_ratio"] = float(ratio)
    return identity


def run_dir_for(cfg: DictConfig) -> Path:
    """``<output_root>/<model>/<bench>/<method>-b<budget>-<hash>`` (``full-<hash>`` for the full cache,
    ``-r<ratio>`` instead of ``-b<budget>`` for a compression-ratio run,
    ``-agnostic`` before the hash in the question-agnostic setting);
    the hash covers :func:`run_identity`."""
    identity = json.dumps(run_identity(cfg), sort_keys=True, default=str)
    digest = hashlib.sha1(identity.encode()).hexdigest()[:8]
    shard = f"-shard{cfg.shard}of{cfg.num_shards}" if cfg.get("num_shards", 1) > 1 else ""
    ratio = cfg.get("compression_ratio")
    budget = "" if is_full(cfg.method) else f"-b{cfg.budget}" if ratio is None else f"-r{float(ratio):g}"
    setting = "-agnostic" if cfg.bench.get("question") == "agnostic" else ""
    return (
        Path(str(cfg.output_root))
        / cfg.model.name
        / cfg.bench.name
        / f"{cfg.method.name}{budget}{setting}-{digest}{shard}"
    )


def read_done(predictions_path: Path) -> list[dict[str, Any]]:
    """Finished records of a run folder (a torn last line repaired and reported)."""
    done, notes = load_records(predictions_path)
    for note in notes:
        print(f"[lava] recovered: {note}")
    return done


def open_run_folder(run_dir: Path, cfg: DictConfig, method: Any) -> None:
    """Create the folder and write what defines the run (``config.yaml``, ``method.json``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    describe = getattr(method, "describe", None)
    write_json_atomic(
        run_dir / "method.json", describe() if callable(describe) else {"name": cfg.method.name}
    )


def make_record(
    sample: Sample,
    bench: Benchmark,
    tokenizer: Any,
    prompt_ids: list[int],
    gen: Any,
    cache: Any,
    phases: dict[str, float],
    context_tokens: int | None = None,
) -> dict[str, Any]:
    """One line of ``predictions.jsonl``: the prediction, what the cache kept, timings, scores.

    ``gen`` is the sample's :class:`~eval.generation.Generation`; ``phases`` its :data:`PHASES` seconds
    (and ``question_seconds`` in the question-agnostic setting, whose records also give
    ``context_tokens``: the prompt tokens that were compressed, the rest being the question part).
    """
    record = {
        "id": sample.id,
        "task": sample.task,
        "prediction": tokenizer.decode(gen.token_ids, skip_special_tokens=True),
        "references": sample.references,
        "meta": sample.meta,
        "prompt_tokens": len(prompt_ids),
        **({} if context_tokens is None else {"context_tokens": context_tokens}),
        "new_tokens": len(gen.token_ids),
        "stop_reason": gen.stop_reason,
        **{name: round(seconds, 4) for name, seconds in phases.items()},
    }
    size = kv_size(cache, len(prompt_ids))
    # a compressing cache records its whole report; a plain one only its bytes (what it keeps is the prompt)
    record.update(size if callable(getattr(cache, "report", None)) else {"cache_bytes": size["cache_bytes"]})
    record["scores"] = bench.score(record)
    return record


def memory_lines(memory: dict[str, Any] | None) -> list[str]:
    """One line on the accelerator's memory (none on a CPU)."""
    if not memory:
        return []
    gib = 2**30
    return [
        f"  {memory['device_name']}: peak {memory['peak_bytes'] / gib:.2f} GiB, "
        f"{memory['peak_above_weights_bytes'] / gib:.2f} GiB above the weights ({memory['weights_bytes'] / gib:.2f} GiB)"
    ]


@dataclass
class RunSummary:
    """What a finished run folder reports back (printed by ``run.py``)."""

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

    def format(self) -> str:
        """The lines ``run.py`` prints after a single run."""
        rate = self.generated_tokens / self.elapsed_seconds if self.elapsed_seconds else 0.0
        lines = [
            "",
            f"  score ({self.headline_metric}): {self.score:.4f}  over {self.num_samples} samples "
            f"({self.new_samples} new)",
            f"  elapsed: {self.elapsed_seconds:.1f} s   generated: {self.generated_tokens} tokens "
            f"({rate:.1f} tokens/s overall)",
            *memory_lines(self.device_memory),
            f"  run folder: {self.run_dir}",
            *[f"    {p}" for p in self.paths],
        ]
        return "\n".join(lines)


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
    scores = bench.scores_json(records)
    write_json_atomic(run_dir / "scores.json", scores)
    artifacts = bench.write_artifacts(run_dir, records)
    kept_path = write_kept_array(run_dir, records)
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


def write_kept_array(run_dir: Path, records: list[dict[str, Any]]) -> Path | None:
    """``kept_per_head.npy``: entries kept per (sample, layer, KV head), shape (samples, layers, kv_heads),
    for the budget plots; None when no record carries ``kept_per_head`` (the full cache).

    Every layer is there, a hybrid model's sliding-window layers too (they hold their rolling window,
    whatever the budget); the records' ``global_layers`` name the compressed ones, and the budget
    table and figures (:func:`eval.tables.sliding_layers`) leave the others out of the budget share."""
    kept = [r["kept_per_head"] for r in records if "kept_per_head" in r]
    if not kept:
        return None
    path = run_dir / "kept_per_head.npy"
    np.save(path, np.asarray(kept, dtype=np.int64))
    return path
