"""Values checked before any work (eval/checks.py): a bad seed and prompts beyond ``model.max_context``
end ``run.py`` with one ``error:`` line and exit status 2, before samples are generated or anything is
written; ``allow_beyond_context=true`` lets long prompts through."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from eval.benchmarks.base import Benchmark, PromptContext
from eval.benchmarks.niah import NeedleHaystack
from eval.checks import check_benchmark, check_config, check_prompt_lengths, validate
from lava.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MAX_CONTEXT = 8192  # configs/model/smollm2-135m.yaml


def run_cli(tmp_path: Path, *args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if cache is not None:  # a machine whose lava-bench cache is empty
        env["LAVA_BENCH_CACHE"] = str(cache)
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


def test_length_refusal_on_an_empty_cache_converts_no_weights(tmp_path):
    """Issue 24: on a fresh machine the refusal waited for the GGUF weights' conversion (~30 s idle,
    94 s under load, past this test's limit): the length check needs the tokenizer only, which is now
    read from the GGUF alone; the weights stay unconverted until a run needs them."""
    cache = tmp_path / "cache"
    start = time.monotonic()
    result = run_cli(tmp_path, "bench=ruler", "bench.lengths=[99999]", cache=cache)
    elapsed = time.monotonic() - start
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, lines
    assert f"beyond model.max_context={MAX_CONTEXT}" in lines[0]
    assert not list(cache.rglob("model.safetensors"))  # the weights were not converted
    assert list(cache.rglob("tokenizer_config.json"))
    assert elapsed < 60


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


# Values that were accepted in silence (issue 24 item 3): each is now a one-line error, exit 2,
# nothing written, before the model loads.
SILENT_BEFORE = [
    (["limit=true"], "limit=True is invalid"),
    (["shard=true"], "shard=True num_shards=1 is invalid"),
    (["num_shards=true"], "num_shards=True is invalid"),
    (["progress=maybe"], "progress='maybe' is invalid; give true or false"),
    (["output_root=null"], "output_root=None is invalid; give a folder path"),
    (["method=full", "budget=abc"], "budget=abc is invalid"),
    (["bench.depths=[]"], "bench.depths must be depths in [0, 100], at least one; got []"),
    (["bench.max_new_tokens=0"], "bench.max_new_tokens=0 is invalid"),
    (["model.max_context=0"], "model.max_context=0 is invalid"),
    (["model.max_prompt_tokens=9000"], "model.max_prompt_tokens=9000 exceeds model.max_context=8192"),
    (["bench.min_new_tokens=true"], "bench.min_new_tokens=True is invalid"),
    (["bench.version=abc"], "bench.version='abc' is invalid"),
]


@pytest.mark.parametrize(("args", "message"), SILENT_BEFORE, ids=[" ".join(a) for a, _ in SILENT_BEFORE])
def test_values_once_accepted_in_silence_are_refused(tmp_path, args, message):
    assert_refused(tmp_path, args, message)


def test_sweep_refuses_them_too(tmp_path):
    """A sweep checks each configuration as its single run: the same values stop it."""
    assert_refused(tmp_path, ["methods=[full,lava]", "budgets=[64]", "limit=true"], "limit=True is invalid")


def single_cfg(**overrides):
    base = {
        "model": {"name": "m", "max_context": 8192, "max_prompt_tokens": 7500},
        "method": {"name": "lava", "_target_": "x.Y"},
        "bench": {"name": "niah"},
        "budget": 64,
        "seed": 42,
        "limit": None,
        "shard": 0,
        "num_shards": 1,
        "progress": True,
        "output_root": "outputs",
        "methods": None,
        "budgets": None,
        "max_decode_batch": 32,
    }
    for key, value in overrides.items():
        node, _, leaf = key.rpartition(".")
        (base[node] if node else base)[leaf] = value
    return OmegaConf.create(base)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"limit": True}, "limit=True"),
        ({"shard": True, "num_shards": 2}, "shard=True"),
        ({"num_shards": True}, "num_shards=True"),
        ({"progress": "yes"}, "progress='yes'"),
        ({"progress": 1}, "progress=1"),
        ({"output_root": None}, "output_root=None"),
        ({"output_root": " "}, "output_root=' '"),
        ({"output_root": True}, "output_root=True"),
        ({"model.max_context": -1}, "model.max_context=-1"),
        ({"model.max_prompt_tokens": 0}, "model.max_prompt_tokens=0"),
        ({"model.max_prompt_tokens": 1.5}, "model.max_prompt_tokens=1.5"),
        ({"model.max_prompt_tokens": 8193}, "model.max_prompt_tokens=8193 exceeds model.max_context=8192"),
    ],
)
def test_validate_refuses(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        validate(single_cfg(**overrides))


def test_validate_accepts_the_defaults_and_the_full_cache_without_budget():
    validate(single_cfg())
    validate(single_cfg(output_root=123))  # a folder named 123
    validate(single_cfg(**{"model.max_prompt_tokens": 9000, "allow_beyond_context": True}))
    validate(single_cfg(**{"method": {"name": "full"}, "budget": None}))  # a sweep's full-cache config
    with pytest.raises(UserError, match="budget=-1 is invalid"):
        validate(single_cfg(**{"method": {"name": "full"}, "budget": -1}))


class Declared(FixedLength):
    """A benchmark whose contract values are set by hand."""

    def __init__(self, **values):
        super().__init__(None)
        self.__dict__.update(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"version": "abc"}, "bench.version='abc' is invalid"),
        ({"version": -1}, "bench.version=-1 is invalid"),
        ({"min_new_tokens": True}, "bench.min_new_tokens=True is invalid"),
        ({"min_new_tokens": 1.0}, "bench.min_new_tokens=1.0 is invalid"),
        ({"unit": "percentage"}, "declares unit='percentage'"),
    ],
)
def test_check_benchmark_refuses_bad_contract_values(values, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_benchmark(Declared(**values))
    check_benchmark(Declared())  # the base class's defaults pass
