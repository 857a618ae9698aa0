"""Finding and reading LongBench's jsonl files.

The hub dataset ``THUDM/LongBench`` is script-based, and ``datasets`` >= 4 no longer runs loading
scripts, so this module never calls ``load_dataset``. Its ``data.zip`` holds one jsonl per task
(``<task>.jsonl`` and, for LongBench-E, ``<task>_e.jsonl``), which is what both ways below read:

1. ``bench.data_dir``: a folder the user unpacked data.zip into (the folder with the jsonl files,
   or one above it);
2. otherwise data.zip from the hub (``huggingface_hub.hf_hub_download``, so the HF cache and
   ``HF_HUB_OFFLINE`` apply), unzipped once under ``$LAVA_BENCH_CACHE/data/longbench``.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

from lava.errors import UserError
from lava.models import cache_root

HUB_REPO = "THUDM/LongBench"
HUB_FILE = "data.zip"
# Any task file identifies the folder that holds the jsonl files inside data.zip.
_PROBE_FILE = "qasper.jsonl"


def how_to_get_data() -> str:
    return (
        f"either download https://huggingface.co/datasets/{HUB_REPO}/resolve/main/{HUB_FILE}, unzip "
        "it and pass bench.data_dir=<the unzipped data folder>, or run once with network access so "
        "data.zip is downloaded and cached"
    )


def _jsonl_folder(root: Path) -> Path | None:
    """``root`` itself when it holds task files, else ``root/data``; None when neither does."""
    for candidate in (root, root / "data"):
        if candidate.is_dir() and any(candidate.glob("*.jsonl")):
            return candidate
    return None


def local_data_dir(data_dir: str | Path) -> Path:
    """The folder of jsonl files under a user-given ``data_dir``.

    Raises
    ------
    UserError
        The folder does not exist or holds no ``*.jsonl`` file.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"bench.data_dir={data_dir} is not a folder; {how_to_get_data()}")
    folder = _jsonl_folder(root)
    if folder is None:
        raise UserError(f"bench.data_dir={data_dir} holds no LongBench *.jsonl files; {how_to_get_data()}")
    return folder


def cached_data_dir(cache_dir: str | Path | None = None, repo_id: str = HUB_REPO) -> Path:
    """Download data.zip (or take it from the HF cache) and unzip it once; return the jsonl folder.

    Raises
    ------
    UserError
        Offline (or the hub unreachable) and nothing cached: says how to provide the data.
    """
    target = Path(cache_dir).expanduser() if cache_dir else cache_root() / "data" / "longbench"
    folder = _jsonl_folder(target)
    if folder is not None and (folder / _PROBE_FILE).exists():
        return folder
    try:
        from huggingface_hub import hf_hub_download

        zip_path = hf_hub_download(repo_id=repo_id, filename=HUB_FILE, repo_type="dataset")
    except Exception as exc:  # offline mode, no route, HTTP errors: all mean "no data this way"
        if type(exc).__name__ == "LocalEntryNotFoundError":
            reason = "data.zip is not in the Hugging Face cache and the hub cannot be reached"
        else:
            reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"
        raise UserError(f"LongBench data not available ({reason}); {how_to_get_data()}") from None
    _unzip_atomically(Path(zip_path), target)
    folder = _jsonl_folder(target)
    if folder is None:
        raise UserError(f"{zip_path} holds no *.jsonl files; delete it, then {how_to_get_data()}")
    return folder


def _unzip_atomically(zip_path: Path, target: Path) -> None:
    """Extract next to ``target`` and rename, so an interrupted unzip never looks complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def task_file(folder: Path, task: str, *, variant_e: bool = False) -> Path:
    """``<folder>/<task>.jsonl`` (LongBench-E: ``<task>_e.jsonl``).

    Raises
    ------
    UserError
        The file is missing.
    """
    path = folder / f"{task}{'_e' if variant_e else ''}.jsonl"
    if not path.exists():
        raise UserError(
            f"LongBench task file {path} is missing; unpack the complete data.zip there or "
            "choose tasks with bench.tasks=[...]"
        )
    return path


def read_task(folder: Path, task: str, *, variant_e: bool = False) -> list[dict[str, Any]]:
    """Records of one task, in file order.

    Raises
    ------
    UserError
        The task's file is missing, or a line is not valid JSON.
    """
    path = task_file(folder, task, variant_e=variant_e)
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{path}:{number} is not valid JSON ({exc.msg}); re-extract data.zip"
                ) from None
    return records
