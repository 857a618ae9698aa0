"""On-disk cache of generated examples, so long (128k) synthetic runs fit their prompts only once.

Fitting a 128k prompt costs one to three tokenizations of half a megabyte of text per sample
(about a second each on one core), and the runner rebuilds every sample on each resume. Examples
are stored per task under ``cache_root()/infinitebench/synthetic/`` in a file named by a hash of
everything they depend on: task, sample count, token budget, seed, generator version and the
tokenizer's definition (:func:`eval.sample_cache.tokenizer_fingerprint`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from eval.benchmarks.infinitebench.tasks import Example
from eval.sample_cache import read_jsonl, tokenizer_fingerprint, write_jsonl
from lava.models import cache_root

__all__ = ["cache_path", "cached_examples", "tokenizer_fingerprint"]

# Bump when a generator changes what it produces for the same arguments.
GENERATOR_VERSION = 1
# Below this budget generating is faster than reading a file: nothing is cached.
CACHE_MIN_TOKENS = 16384


def cache_path(task: str, num_samples: int, budget: int, seed: int, fingerprint: str) -> Path:
    key = json.dumps([task, num_samples, budget, seed, GENERATOR_VERSION, fingerprint])
    name = f"{task}-n{num_samples}-L{budget}-s{seed}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.jsonl"
    return cache_root() / "infinitebench" / "synthetic" / name


def cached_examples(path: Path, build: Callable[[], Iterable[Example]]) -> list[Example]:
    """Examples read from ``path``, or built, written there (atomically) and returned."""
    rows = read_jsonl(path)
    if rows:
        return [Example(**row) for row in rows]
    examples = list(build())
    write_jsonl(path, [dataclasses.asdict(example) for example in examples])
    return examples
