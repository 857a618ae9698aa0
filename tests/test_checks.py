"""Values checked before any work (eval/checks.py): a bad seed and prompts beyond ``model.max_context``
end ``run.py`` with one ``error:`` line and exit status 2, before samples are generated or anything is
written; ``allow_beyond_context=true`` lets long prompts through."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from eval.benchmarks.base import Benchmark, PromptContext
from eval.benchmarks.niah import NeedleHaystack
from eval.checks import check_config, check_prompt_lengths
from lava.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MAX_CONTEXT = 8192  # configs/model/smollm2-135m.yaml


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "run.py", f"output_root={tmp_path / 'out'}", "progress=false", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_refused(tmp_path: Path, args: list[str], message: str, seconds: float = 60) -> None:
    start = time.monotonic()
    result = run_cli(tmp_path, *args)
    elapsed = time.monotonic() - start
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()  # nothing written
    assert elapsed < seconds  # refused before sample generation or a model load


def test_non_integer_seed(tmp_path):
    assert_refused(tmp_path, ["seed=abc"], "seed='abc' is invalid; give a non-negative integer")


def test_fractional_seed(tmp_path):
    assert_refused(tmp_path, ["seed=1.5"], "seed=1.5 is invalid")


def test_sweep_keys_without_methods_are_refused(tmp_path):
    """budgets= and max_decode_batch= were ignored by a single run (issue 24: a 71 s and a 165 s run)."""
    assert_refused(tmp_path, ["budgets=[]"], "budgets=[] needs methods=[...]")
    assert_refused(tmp_path, ["max_decode_batch=0"], "max_decode_batch=0 is invalid")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"budgets": [64, 128]}, "budgets=[64, 128] needs methods=[...]"),
        ({"max_decode_batch": 0}, "max_decode_batch=0 is invalid"),
        ({"max_decode_batch": -3}, "max_decode_batch=-3 is invalid"),
        ({"max_decode_batch": 2.5}, "max_decode_batch=2.5 is invalid"),
        ({"max_decode_batch": True}, "max_decode_batch=True is invalid"),
    ],
)
def test_sweep_key_values_are_checked(overrides, message):
    cfg = OmegaConf.create(
        {"seed": 42, "methods": None, "budgets": None, "max_decode_batch": 32, **overrides}
    )
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_config(cfg)
    check_config(OmegaConf.create({"seed": 42, "methods": ["lava"], "budgets": [64], "max_decode_batch": 1}))


def test_ruler_length_beyond_context(tmp_path):
    assert_refused(
        tmp_path,
        ["bench=ruler", "bench.lengths=[99999]"],
        f"prompts of 99999 tokens, beyond model.max_context={MAX_CONTEXT}; lower",
    )


def test_infinitebench_length_beyond_context(tmp_path):
    assert_refused(
        tmp_path,
        ["bench=infinitebench", "bench.source=synthetic", "bench.max_length=131072"],
        f"prompts of 131072 tokens, beyond model.max_context={MAX_CONTEXT}",
    )


@pytest.mark.skipif(
    NeedleHaystack.requested_prompt_tokens is Benchmark.requested_prompt_tokens,
    reason="NIAH implements requested_prompt_tokens in its own branch",
)
def test_niah_length_beyond_context(tmp_path):
    assert_refused(
        tmp_path, ["bench=niah", "bench.lengths=[12000]"], f"beyond model.max_context={MAX_CONTEXT}"
    )


def test_bad_switch_value(tmp_path):
    assert_refused(tmp_path, ["allow_beyond_context=maybe"], "allow_beyond_context='maybe' is invalid")


class FixedLength(Benchmark):
    """A benchmark whose config asks for prompts of ``tokens`` tokens."""

    name = "fixed"

    def __init__(self, tokens: int | None):
        self.tokens = tokens

    def samples(self, ctx):
        raise AssertionError("the check must not generate samples")

    def score(self, record):
        return {}

    def requested_prompt_tokens(self, ctx):
        return self.tokens


CTX = PromptContext(tokenizer=None, model_name="m", max_prompt_tokens=7500)


@pytest.mark.parametrize("tokens", [None, 1, MAX_CONTEXT])
def test_prompts_within_the_window_pass(tokens):
    check_prompt_lengths(FixedLength(tokens), CTX, MAX_CONTEXT, OmegaConf.create({}))


def test_one_token_beyond_the_window_is_refused_unless_allowed():
    with pytest.raises(UserError, match=f"prompts of {MAX_CONTEXT + 1} tokens"):
        check_prompt_lengths(FixedLength(MAX_CONTEXT + 1), CTX, MAX_CONTEXT, OmegaConf.create({}))
    allowed = OmegaConf.create({"allow_beyond_context": True})
    check_prompt_lengths(FixedLength(MAX_CONTEXT + 1), CTX, MAX_CONTEXT, allowed)


@pytest.mark.parametrize("seed", [0, 42, 2**31])
def test_valid_seeds_pass(seed):
    check_config(OmegaConf.create({"seed": seed}))


@pytest.mark.parametrize("seed", ["abc", 1.5, True, -1, None])
def test_invalid_seeds_are_refused(seed):
    with pytest.raises(UserError, match="seed="):
        check_config(OmegaConf.create({"seed": seed}))


def test_longbench_keeps_its_own_truncation():
    from eval.benchmarks.longbench import LongBench

    assert LongBench.requested_prompt_tokens is Benchmark.requested_prompt_tokens
