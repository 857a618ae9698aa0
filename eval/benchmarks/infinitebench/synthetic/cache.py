"""On-disk cache of generated examples, so long (128k) synthetic runs fit their prompts only once.

Fitting a 128k prompt costs one to three tokenizations of half a megabyte of text per sample
(about a second each on one core), and the runner rebuilds every sample on each resume. Examples
are stored per task under ``cache_root()/infinitebench/synthetic/`` in a file named by a hash of
everything they depend on: task, sample count, token budget, seed, generator version and the
tokenizer's vocabulary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from eval.benchmarks.infinitebench.tasks import Example
from lava.models import cache_root

# Bump when a generator changes what it produces for the same arguments.
GENERATOR_VERSION = 1
# Below this budget generating is faster than reading a file: nothing is cached.
CACHE_MIN_TOKENS = 16384


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Class name and a hash of the vocabulary: two tokenizers with equal fingerprints fit alike."""
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha1(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
    return f"{type(tokenizer).__name__}-{digest}"


def cache_path(task: str, num_samples: int, budget: int, seed: int, fingerprint: str) -> Path:
    key = json.dumps([task, num_samples, budget, seed, GENERATOR_VERSION, fingerprint])
    name = f"{task}-n{num_samples}-L{budget}-s{seed}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.jsonl"
    return cache_root() / "infinitebench" / "synthetic" / name


def cached_examples(path: Path, build: Callable[[], Iterable[Example]]) -> list[Example]:
    """Examples read from ``path``, or built, written there (atomically) and returned."""
    if path.is_file():
        with open(path, encoding="utf-8") as fin:
            return [Example(**json.loads(line)) for line in fin if line.strip()]
    examples = list(build())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fout:
        for example in examples:
            fout.write(json.dumps(dataclasses.asdict(example), ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # a killed run never leaves a half-written cache file behind
    return examples
