"""Crash-safe predictions.jsonl: torn last lines are dropped, duplicates ignored, real damage reported."""

import json

import pytest

from eval.records import RecordWriter, load_records
from lava.errors import UserError


def _line(i: int) -> str:
    return json.dumps({"id": f"s{i}", "scores": {"score": i}}) + "\n"


def test_round_trip(tmp_path):
    path = tmp_path / "p.jsonl"
    with RecordWriter(path) as w:
        for i in range(3):
            w.write({"id": f"s{i}", "scores": {"score": i}})
    records, notes = load_records(path)
    assert [r["id"] for r in records] == ["s0", "s1", "s2"]
    assert notes == []


def test_torn_last_line_is_dropped_and_file_repaired(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_line(0) + _line(1) + '{"id": "s2", "sco')
    records, notes = load_records(path)
    assert [r["id"] for r in records] == ["s0", "s1"]
    assert len(notes) == 1 and "half-written" in notes[0]
    assert path.read_text() == _line(0) + _line(1)  # a later append starts on a clean line


def test_complete_last_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_line(0) + _line(1).rstrip("\n"))
    records, _ = load_records(path)
    assert [r["id"] for r in records] == ["s0", "s1"]
    assert path.read_text() == _line(0) + _line(1)


def test_duplicate_ids_are_counted_once(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_line(0) + _line(1) + _line(0))
    records, notes = load_records(path)
    assert [r["id"] for r in records] == ["s0", "s1"]
    assert any("duplicate" in n for n in notes)
    assert path.read_text() == _line(0) + _line(1)


def test_corruption_in_the_middle_is_an_error_and_leaves_the_file(tmp_path):
    path = tmp_path / "p.jsonl"
    content = _line(0) + "garbage\n" + _line(2)
    path.write_text(content)
    with pytest.raises(UserError, match="line 2 is corrupted"):
        load_records(path)
    assert path.read_text() == content
