"""Crash-safe JSONL of per-sample records: append-only, one ``write`` per line, recovery on open.

A run killed at any moment leaves at most one half-written last line; :func:`load_records` drops it
(truncating the file back to the last complete line) and reports it, so a resumed run neither loses
finished samples nor counts one twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lava.errors import UserError


def load_records(path: Path, *, repair: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """Read records, dropping a torn last line and duplicate ids.

    Returns
    -------
    records : list of dict
        One per sample id, first occurrence kept.
    notes : list of str
        What was recovered (shown to the user).

    Raises
    ------
    UserError
        A corrupted line that is not the last one: that is damage, not an interrupted write.
    """
    if not path.exists():
        return [], []
    data = path.read_bytes()
    lines = data.split(b"\n")
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    seen: set[str] = set()
    repaired = bytearray()
    for number, raw in enumerate(lines[: last + 1], start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or "id" not in record:
                raise ValueError("not a record")
        except ValueError:
            if number - 1 == last:
                notes.append(f"dropped a half-written last line of {path.name} (interrupted run)")
                break
            raise UserError(
                f"{path} line {number} is corrupted; delete that line (or the run folder) and rerun"
            ) from None
        if record["id"] in seen:
            notes.append(f"dropped a duplicate of sample {record['id']} from {path.name}")
            continue
        repaired += raw + b"\n"
        seen.add(record["id"])
        records.append(record)
    if repair and bytes(repaired) != data:
        write_bytes_atomic(path, bytes(repaired))
    return records, notes


class RecordWriter:
    """Append records to a JSONL file, flushed line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self._file.write(line)  # a single write: a kill leaves a whole line or a torn tail, never two halves
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers never see half a file.

    The temporary name carries the process id: two processes writing the same file never share it.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (:func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
