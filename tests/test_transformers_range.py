"""The supported transformers range: declared once, checked before the cache classes are defined.

An installed version outside ``[MIN_TRANSFORMERS, MAX_TRANSFORMERS)`` makes ``run.py`` stop with one
``error:`` line naming the needed range (exit 2, nothing written); the version is faked in a
subprocess so the test needs no second install. ``make test-lowest`` runs the fast tests on the
floor version itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lava.compat import MAX_TRANSFORMERS, MIN_TRANSFORMERS, require_transformers
from lava.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# Runs run.py with importlib.metadata reporting another transformers version.
FAKE_VERSION_RUN = """
import importlib.metadata, runpy, sys
real, fake = importlib.metadata.version, sys.argv[1]
importlib.metadata.version = lambda name: fake if name == "transformers" else real(name)
sys.argv = ["run.py", *sys.argv[2:]]
runpy.run_path("run.py", run_name="__main__")
"""


def test_pyproject_declares_the_same_range():
    pyproject = (REPO / "pyproject.toml").read_text()
    (declared,) = re.findall(r'"transformers([^"]*)"', pyproject)
    assert declared == f">={MIN_TRANSFORMERS},<{MAX_TRANSFORMERS}"


@pytest.mark.parametrize("version", [MIN_TRANSFORMERS, "5.2.0", "5.24.0", "5.99.1", "5.3.0.dev0"])
def test_supported_versions_pass(version):
    require_transformers(version)


@pytest.mark.parametrize("version", ["4.57.6", "4.0.0", "6.0.0", "6.1.0.dev0"])
def test_unsupported_versions_are_refused(version):
    with pytest.raises(
        UserError, match=rf"transformers {re.escape(version)} is installed; .*>={MIN_TRANSFORMERS}"
    ):
        require_transformers(version)


@pytest.mark.parametrize("version", ["4.57.6", "6.0.0"])
def test_run_stops_with_one_line(tmp_path, version):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            FAKE_VERSION_RUN,
            version,
            f"output_root={tmp_path / 'out'}",
            "progress=false",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert lines == [
        f"error: transformers {version} is installed; lava-bench needs "
        f"transformers>={MIN_TRANSFORMERS},<{MAX_TRANSFORMERS} "
        f"(pip install 'transformers>={MIN_TRANSFORMERS},<{MAX_TRANSFORMERS}')"
    ]
    assert not (tmp_path / "out").exists()


def test_make_test_lowest_installs_the_floor():
    makefile = (REPO / "Makefile").read_text()
    (pin,) = re.findall(r"^TRANSFORMERS_LOWEST\s*\?=\s*transformers==(\S+)", makefile, flags=re.M)
    assert pin == MIN_TRANSFORMERS
