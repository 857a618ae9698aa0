"""Per-benchmark generation settings: each bench config names its upstream `min_new_tokens` and a version."""

import dataclasses
import importlib

import pytest
import yaml

from tests.conftest import REPO

# Upstream minimum answer lengths: LongBench pred.py sets min_length = prompt + 1; the NIAH scripts
# (LAVa, KVCache-Factory), RULER and InfiniteBench generate without one.
UPSTREAM_MIN_NEW_TOKENS = {
    "longbench": 1,
    "longbench_e": 1,
    "niah": 0,
    "niah_paper": 0,
    "ruler": 0,
    "infinitebench": 0,
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_MIN_NEW_TOKENS))
def test_bench_config_names_min_new_tokens_and_version(name):
    cfg = yaml.safe_load((REPO / "configs" / "bench" / f"{name}.yaml").read_text())
    assert cfg["min_new_tokens"] == UPSTREAM_MIN_NEW_TOKENS[name]
    assert isinstance(cfg["version"], int) and cfg["version"] >= 1
    module, cls = cfg["_target_"].rsplit(".", 1)
    defaults = {f.name: f.default for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    # the dataclass default agrees with the config, so a benchmark built in code behaves the same
    assert defaults["min_new_tokens"] == cfg["min_new_tokens"]
    assert defaults["version"] == cfg["version"]


def test_no_global_min_new_tokens():
    assert "min_new_tokens" not in yaml.safe_load((REPO / "configs" / "config.yaml").read_text())


def test_paper_grid_is_lava_script_grid():
    import numpy as np

    cfg = yaml.safe_load((REPO / "configs" / "bench" / "niah_paper.yaml").read_text())
    # eval_needle_lava.sh: --s_len 1000 --e_len 31500 --step 400 -> np.arange(s, e + 1, step);
    # depths: np.round(np.linspace(0, 100, num=10)).astype(int)
    assert cfg["lengths"] == np.arange(1000, 31500 + 1, step=400).tolist()
    assert cfg["depths"] == np.round(np.linspace(0, 100, num=10, endpoint=True)).astype(int).tolist()
    niah = yaml.safe_load((REPO / "configs" / "bench" / "niah.yaml").read_text())
    for key in ("_target_", "buffer", "max_new_tokens", "min_new_tokens", "period_ids", "version"):
        assert cfg[key] == niah[key], key
