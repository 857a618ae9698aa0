"""On-disk caches of generated benchmark samples: the shared parts (tokenizer fingerprint, JSONL files).

Generated samples depend on the tokenizer, so cache keys include :func:`tokenizer_fingerprint`.
Generation is deterministic, so a cache hit only saves time: deleting a cache never changes results.
Files are written atomically, so a killed run never leaves half a cache file; a damaged file reads as
empty and is regenerated.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from pathlib import Path
from typing import Any

from eval.records import write_text_atomic

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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a cache file; a missing or damaged file reads as empty (the caller regenerates it)."""
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows atomically, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
