"""Loading released InfiniteBench data: the Hugging Face hub or a local folder of ``<task>.jsonl`` files.

The hub dataset ``xinrongzhang2022/InfiniteBench`` has one split per task. Its files disagree on
columns (kv_retrieval has no ``options``), so ``datasets`` needs an explicit schema; with it numeric
answers come back as strings, which the scorers cast back. The raw jsonl files (what
``scripts/download_dataset.sh`` fetches) keep ints and can be downloaded one task at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eval.benchmarks.infinitebench.tasks import Example
from lava.errors import UserError

HUB_REPO = "xinrongzhang2022/InfiniteBench"
HUB_FORMATS = ("jsonl", "datasets")


def hub_features() -> Any:
    """The explicit schema that makes every split loadable (InfiniteBench issue #19)."""
    from datasets import Features, Sequence, Value

    return Features(
        {
            "id": Value("int64"),
            "context": Value("string"),
            "input": Value("string"),
            "answer": Sequence(Value("string")),
            "options": Sequence(Value("string")),
        }
    )


def to_example(row: dict[str, Any], index: int) -> Example:
    """Normalise one released row (jsonl or hub) into an :class:`Example`."""
    # Early releases named the context "content" (create_prompt in src/eval_utils.py renames it).
    context = row["context"] if "context" in row else row.get("content")
    if context is None or "input" not in row or "answer" not in row:
        raise UserError(f"InfiniteBench row {index} lacks context/input/answer (keys: {sorted(row)})")
    answer = row["answer"]
    return Example(
        id=int(row["id"]) if row.get("id") is not None else index,
        context=context,
        input=row["input"],
        answer=list(answer) if isinstance(answer, (list, tuple)) else [answer],
        options=list(row.get("options") or []),
    )


def read_jsonl(path: Path, limit: int | None = None) -> Iterator[Example]:
    """Rows of a ``<task>.jsonl`` file, the first ``limit`` only (files reach hundreds of MB)."""
    count = 0
    with open(path, encoding="utf-8") as fin:
        for line in fin:
            if limit is not None and count >= limit:
                return
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{path}: line {count + 1} is not JSON ({exc.msg}); re-download the file"
                ) from None
            yield to_example(row, count)
            count += 1


def load_local(task: str, data_dir: str | Path | None, limit: int | None = None) -> list[Example]:
    """Rows of ``<data_dir>/<task>.jsonl``."""
    if not data_dir:
        raise UserError("bench.source=local needs bench.data_dir=<folder with <task>.jsonl files>")
    path = Path(data_dir).expanduser() / f"{task}.jsonl"
    if not path.is_file():
        raise UserError(
            f"{path} not found; put the InfiniteBench file {task}.jsonl there "
            f"(https://huggingface.co/datasets/{HUB_REPO}/resolve/main/{task}.jsonl)"
        )
    return list(read_jsonl(path, limit))


def _offline_error(task: str, repo: str, exc: BaseException) -> UserError:
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
    return UserError(
        f"cannot get InfiniteBench task {task!r} from the hub {repo} ({reason}); offline? download "
        f"{task}.jsonl on a machine with network and pass bench.source=local bench.data_dir=<folder>, "
        f"or use bench.source=synthetic for the generable tasks"
    )


def load_hub(
    task: str, repo: str = HUB_REPO, hub_format: str = "jsonl", limit: int | None = None
) -> list[Example]:
    """Rows of one task from the hub (served from the local HF cache when it is there).

    Parameters
    ----------
    task : str
        Split / file name.
    repo : str
        Dataset repository id.
    hub_format : {"jsonl", "datasets"}
        ``jsonl`` downloads only ``<task>.jsonl`` (ints kept); ``datasets`` loads the split with
        :func:`hub_features` (numbers become strings).
    limit : int, optional
        Keep the first ``limit`` rows.
    """
    if hub_format not in HUB_FORMATS:
        raise UserError(f"bench.hub_format={hub_format} is invalid; use one of {list(HUB_FORMATS)}")
    if hub_format == "jsonl":
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(repo_id=repo, filename=f"{task}.jsonl", repo_type="dataset")
        except Exception as exc:  # offline, no such repo, HTTP errors: all end the run the same way
            raise _offline_error(task, repo, exc) from None
        return list(read_jsonl(Path(path), limit))

    from datasets import load_dataset

    split = task if limit is None else f"{task}[:{limit}]"
    try:
        rows = load_dataset(repo, split=split, features=hub_features())
    except Exception as exc:
        raise _offline_error(task, repo, exc) from None
    return [to_example(row, i) for i, row in enumerate(rows)]
