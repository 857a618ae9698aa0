"""What a run folder records about where its numbers came from."""

from __future__ import annotations

import importlib.metadata
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "hydra-core", "datasets", "flash-attn", "lava-bench")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo: Path | None = None) -> dict[str, Any]:
    """HEAD commit and whether the working tree had uncommitted changes (None outside a git checkout)."""
    cwd = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty)}


def commit_label(repo: Path | None = None) -> str:
    """:func:`git_commit` as one short label: ``abc1234``, ``abc1234+dirty``, or ``unknown`` outside git."""
    info = git_commit(repo)
    if not info["commit"]:
        return "unknown"
    return info["commit"][:7] + ("+dirty" if info["dirty"] else "")


def peak_memory() -> dict[str, float | None]:
    """Peak resident set size of this process (MiB) and peak CUDA allocation when a GPU is used."""
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    cuda_mib = None
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda_mib = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return {"peak_rss_mib": round(peak_rss_mib, 1), "peak_cuda_mib": cuda_mib}
