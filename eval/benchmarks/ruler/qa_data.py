"""Raw data of RULER's QA tasks: SQuAD v2.0 dev (qa_1) and HotpotQA dev distractor (qa_2).

RULER downloads both as raw JSON (``scripts/data/synthetic/json/download_qa_dataset.sh``). We read
them from ``bench.qa_data_dir`` when given, else from the cache, downloading them there when the
network allows. Offline and without a copy, a one-line :class:`UserError` says what to fetch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lava.errors import UserError
from lava.models import cache_root


@dataclass(frozen=True)
class QASource:
    """Where one QA data set comes from.

    Attributes
    ----------
    filenames : tuple[str, ...]
        Accepted names in a local folder (RULER's name first, then the original download name).
    urls : tuple[str, ...]
        Download locations, tried in order (RULER's download_qa_dataset.sh).
    """

    filenames: tuple[str, ...]
    urls: tuple[str, ...]


QA_SOURCES: dict[str, QASource] = {
    "squad": QASource(
        filenames=("squad.json", "dev-v2.0.json"),
        urls=("https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json",),
    ),
    "hotpotqa": QASource(
        filenames=("hotpotqa.json", "hotpot_dev_distractor_v1.json"),
        urls=(
            "http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json",
            "https://huggingface.co/datasets/namlh2004/hotpotqa/resolve/"
            "7e54db4656209750ff487f6fdf8e39a66dba136b/hotpot_dev_distractor_v1.json",
        ),
    ),
}


@dataclass(frozen=True)
class QAPair:
    """One question: its text, gold answers, gold documents and same-article distractors (indices)."""

    query: str
    outputs: tuple[str, ...]
    context: tuple[int, ...]
    more_context: tuple[int, ...] = ()


def qa_cache_dir() -> Path:
    return cache_root() / "ruler" / "qa"


def _download(urls: tuple[str, ...], target: Path, timeout: float = 60.0) -> None:
    """Fetch the first URL that answers into ``target`` (atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, tmp.open("wb") as out:
                shutil.copyfileobj(response, out)
            json.loads(tmp.read_text(encoding="utf-8"))  # a proxy error page must not become the cache
            tmp.replace(target)
            return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
    tmp.unlink(missing_ok=True)
    raise OSError("; ".join(errors))


def locate_qa_file(dataset: str, data_dir: str | None, download: bool) -> Path:
    """Path of the raw JSON of ``dataset`` (``squad`` or ``hotpotqa``), downloading it if allowed."""
    source = QA_SOURCES[dataset]
    folders = [Path(data_dir).expanduser()] if data_dir else [qa_cache_dir()]
    for folder in folders:
        for name in source.filenames:
            if (folder / name).is_file():
                return folder / name
    if data_dir:
        raise UserError(
            f"bench.qa_data_dir={data_dir} has none of {list(source.filenames)}; "
            f"download {source.urls[0]} into it"
        )
    target = qa_cache_dir() / source.filenames[0]
    if download:
        try:
            _download(source.urls, target)
            return target
        except OSError:
            pass
    raise UserError(
        f"RULER {dataset} data is missing (offline?): download {source.urls[0]} on a machine with network and "
        f"pass bench.qa_data_dir=<its folder>, or drop qa_1/qa_2 from bench.tasks"
    )


def file_digest(path: Path) -> str:
    """SHA-256 of a data file, so cached samples follow the data they were made from."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_squad(data: dict) -> tuple[list[QAPair], list[str]]:
    """SQuAD v2: documents are the sorted unique paragraphs; answerable questions only (RULER qa.py)."""
    docs = sorted({p["context"] for article in data["data"] for p in article["paragraphs"]})
    doc_index = {doc: i for i, doc in enumerate(docs)}
    pairs = []
    for article in data["data"]:
        article_docs = [doc_index[p["context"]] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            gold = doc_index[p["context"]]
            for qa in p["qas"]:
                if not qa["is_impossible"]:
                    pairs.append(
                        QAPair(
                            query=qa["question"],
                            outputs=tuple(a["text"] for a in qa["answers"]),
                            context=(gold,),
                            more_context=tuple(i for i in article_docs if i != gold),
                        )
                    )
    return pairs, docs


def _hotpot_doc(title: str, sentences: list[str]) -> str:
    return f"{title}\n{''.join(sentences)}"


def read_hotpotqa(data: list) -> tuple[list[QAPair], list[str]]:
    """HotpotQA: a document is ``title\\n`` + its sentences joined; all 10 context entries are gold (RULER qa.py)."""
    docs = sorted({_hotpot_doc(t, p) for d in data for t, p in d["context"]})
    doc_index = {doc: i for i, doc in enumerate(docs)}
    pairs = [
        QAPair(
            query=d["question"],
            outputs=(d["answer"],),
            context=tuple(doc_index[_hotpot_doc(t, p)] for t, p in d["context"]),
        )
        for d in data
    ]
    return pairs, docs


@functools.lru_cache(maxsize=2)
def load_qa(dataset: str, path: str) -> tuple[list[QAPair], list[str]]:
    """Questions and documents of ``dataset`` read from the raw JSON at ``path``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return read_squad(data) if dataset == "squad" else read_hotpotqa(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path} is not a {dataset} JSON file as RULER expects ({exc}); re-download it"
        ) from exc
