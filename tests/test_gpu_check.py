"""The GPU check runs on a CPU at tiny sizes (``--device cpu --small``), so it cannot rot between GPU sessions.

Its checks are themselves tested: the kept-set comparison against hand-made differences, the
attention check against a deliberately wrong path, the time budget against a budget nothing fits.
"""

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402

from eval.gpu_check import attention_paths  # noqa: E402
from eval.gpu_check.kept import compare_kept  # noqa: E402
from eval.gpu_check.methods import compressing_methods  # noqa: E402


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    assert gpu_check.main(["--device", "cpu", "--small", "--out", str(out), "--time-budget", "300"]) == 0
    return out, json.loads((out / "gpu_check.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_small_run_writes_every_file(small_run):
    out, results = small_run
    names = {p.name for p in out.iterdir()}
    assert names == {
        "token_identity.csv",
        "kept_entries.csv",
        "attention.csv",
        "perf.csv",
        "gpu_check.json",
        "summary.md",
    }
    assert results["errors"] == [] and results["skipped"] == []
    summary = (out / "summary.md").read_text()
    assert summary.count("**PASS**") == 3


def test_every_method_token_identical_in_fp32_and_passes_in_bf16(small_run):
    out, _ = small_run
    rows = read_csv(out / "token_identity.csv")
    methods = compressing_methods()
    assert sorted({r["method"] for r in rows}) == methods
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    for r in rows:
        assert r["compressed"] == "False"  # budget = prompt: nothing evicted
        assert r["passed"] == "True"
        assert len(r["tokens"].split()) == int(r["new_tokens"])
        if r["dtype"] == "float32":
            assert r["identical"] == "True" and r["tokens"] == r["ref_tokens"]


def test_kept_entries_cpu_replay_identical(small_run):
    out, _ = small_run
    rows = read_csv(out / "kept_entries.csv")
    assert rows
    for r in rows:
        assert int(r["budget"]) < int(r["prompt_tokens"])
        assert r["identical"] == "True" and int(r["kept_cpu"]) == int(r["kept_device"])
        # tiny model: 3 layers x 2 KV heads; no method stores more than layers x heads x budget
        assert int(r["heads"]) == 6 and int(r["kept_cpu"]) <= 6 * int(r["budget"])


def test_attention_paths_within_tolerance(small_run):
    out, _ = small_run
    rows = read_csv(out / "attention.csv")
    ran = [r for r in rows if r["ran"] == "True"]
    assert {r["path"] for r in ran} == {"masked-matmul", "sdpa-padded"}  # flash/torch varlen need CUDA
    for r in ran:
        if r["dtype"] == "float32":
            assert float(r["max_abs_err"]) <= 1e-5
        else:
            assert float(r["rel_err"]) <= 2e-2
        assert r["passed"] == "True"
    assert all(r["note"] for r in rows if r["ran"] == "False")  # each path that did not run says why


def test_perf_grid_and_ratios(small_run):
    out, results = small_run
    rows = read_csv(out / "perf.csv")
    got = [(r["method"], r["budget"]) for r in rows]
    budgets = gpu_check.SMALL_SIZES["perf_budgets"]
    methods = ["full@budget", "snapkv", "pyramidkv", "adakv", "cake", "lava"]
    repeated = [("lava", str(max(budgets))), ("adakv", str(max(budgets))), ("full@budget", str(max(budgets)))]
    assert got == [("full", "")] + [(m, str(b)) for b in budgets for m in methods] + repeated
    assert [r["repeat"] for r in rows] == ["0"] * (1 + len(budgets) * len(methods)) + ["1"] * 3
    full = rows[0]
    assert float(full["kv_ratio"]) == 1.0 and float(full["decode_speedup"]) == 1.0
    prompt = results["meta"]["sizes"]["perf_prompt"]
    # full cache: 3 layers x 2 KV heads x prompt x (key + value) x 16 dims x 4 bytes (fp32)
    assert int(full["kv_bytes"]) == 3 * 2 * prompt * 2 * 16 * 4
    for r in rows[1:]:
        b = int(r["budget"])
        assert int(r["kept_entries"]) <= 3 * 2 * b
        assert float(r["kv_ratio"]) == pytest.approx(int(r["kv_bytes"]) / int(full["kv_bytes"]))
        assert int(r["budget_kv_bytes"]) == 3 * 2 * b * 2 * 16 * 4
        assert r["finite"] == "True" and float(r["decode_tok_s"]) > 0
        if r["method"] == "full@budget":
            assert float(r["decode_vs_ceiling"]) == 1.0 and int(r["prompt_tokens"]) == b


def test_compare_kept_against_hand_made_differences():
    scores = [torch.tensor([[5.0, 1.0, 3.0, 3.0, 0.5]])]  # one layer, one head, 5 evictable positions
    cpu = [[torch.tensor([0, 2, 5, 6])]]  # keeps 0 and 2 (score 5 and 3) plus window positions 5, 6
    tie = [[torch.tensor([0, 3, 5, 6])]]  # 3 instead of 2: equal scores
    wrong = [[torch.tensor([0, 1, 5, 6])]]  # 1 instead of 2: score 1 vs cutoff 3
    assert compare_kept(cpu, cpu, scores) == {
        "heads": 1, "identical_heads": 1, "diff_entries": 0, "count_diff": 0, "max_score_gap": 0.0
    }  # fmt: skip
    assert compare_kept(cpu, tie, scores)["max_score_gap"] == 0.0
    result = compare_kept(cpu, wrong, scores)
    assert result["diff_entries"] == 2 and result["max_score_gap"] == pytest.approx(2 / 3)
    window_differs = [[torch.tensor([0, 2, 5])]]
    assert compare_kept(cpu, window_differs, scores)["max_score_gap"] == float("inf")


def test_attention_check_catches_a_wrong_path(monkeypatch):
    def off_by_a_bit(case):
        right = attention_paths.masked_matmul(case)
        return lambda: right() * 1.001

    monkeypatch.setattr(attention_paths, "available_paths", lambda device: {"wrong": off_by_a_bit})
    rows = attention_paths.check_paths([("t", 4, 2, 8, 16, 2)], "cpu", [torch.float32], iters=1)
    assert rows[0]["ran"] and rows[0]["passed"] is False and rows[0]["max_abs_err"] > 1e-5


def test_reference_is_plain_attention():
    case = attention_paths.make_case("t", 2, 1, 4, 3, 1, torch.float32, "cpu")
    # one KV head: every row belongs to it, so the reference is softmax(q K^T s) V over all rows
    q, k, v = case.query.double(), case.keys.double(), case.values.double()
    expected = torch.softmax(q[:, 0] @ k.T * case.scale, dim=-1) @ v
    assert torch.allclose(attention_paths.reference(case)[:, 0], expected)


def test_time_budget_skips_and_reports(tmp_path):
    assert gpu_check.main(["--device", "cpu", "--small", "--out", str(tmp_path), "--time-budget", "0.5",
                           "--phases", "attention", "perf"]) == 0  # fmt: skip
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["what"] for s in results["skipped"]][:1] == ["decode attention paths"]
    assert "perf" not in results and "Skipped (time budget)" in (tmp_path / "summary.md").read_text()


def loop_varlen_attn(
    query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, enable_gqa=False, **_
):
    """varlen_attn by its documented meaning: sequence i = query rows cu_q[i]:cu_q[i+1] over key rows
    cu_k[i]:cu_k[i+1], query head h reading KV head h // (Hq / Hkv); non-causal here (one query each)."""
    out = torch.empty_like(query, dtype=torch.float64)
    group = query.shape[1] // key.shape[1]
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    for i in range(len(cu_seq_q) - 1):
        qs, ks = slice(cu_seq_q[i], cu_seq_q[i + 1]), slice(cu_seq_k[i], cu_seq_k[i + 1])
        for h in range(query.shape[1]):
            logits = query[qs, h].double() @ key[ks, h // group].double().T * scale
            out[qs, h] = torch.softmax(logits, dim=-1) @ value[ks, h // group].double()
    return out.to(query.dtype)


def old_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False):
    """The API's first form: no ``scale`` (always d ** -0.5), no ``enable_gqa`` (equal head counts)."""
    assert query.shape[1] == key.shape[1]
    return loop_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k)


@pytest.mark.parametrize("kernel", [loop_varlen_attn, old_varlen_attn])
def test_torch_varlen_layout_against_a_loop_kernel(monkeypatch, kernel):
    """The gather into one sequence per KV head is right; on a GPU only the kernel itself is new."""
    import torch.nn.attention.varlen as varlen

    monkeypatch.setattr(varlen, "varlen_attn", kernel)
    for hq, hkv in [(4, 2), (6, 2), (3, 3)]:
        case = attention_paths.make_case("t", hq, hkv, 8, 12, 3, torch.float32, "cpu", seed=hq)
        case.scale = 0.3  # not the default d ** -0.5, so a dropped scale shows
        out = attention_paths.torch_varlen(case)()
        assert torch.allclose(out.double(), attention_paths.reference(case), atol=1e-6)


def test_token_identity_fails_a_cache_that_attends_wrongly(monkeypatch):
    """A cache whose stored values are 20 % off must fail the check (logits far above the noise floor)."""
    from transformers import DynamicCache

    from eval.gpu_check import tokens
    from eval.gpu_check.models import TINY, random_llama

    class SkewedCache(DynamicCache):
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            return super().update(key_states, value_states * 1.2, layer_idx, *args, **kwargs)

        def report(self):
            return {"compressed": False}

    class SkewedMethod:
        def make_cache(self, model, max_new_tokens):
            return SkewedCache(config=model.config)

    monkeypatch.setattr(tokens, "make_method", lambda *args: SkewedMethod())
    model = random_llama(TINY, torch.float32, "cpu")
    ids = torch.randint(0, TINY["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(0))
    (row,) = tokens.token_identity(model, "tiny", ids, ["skewed"], "cpu", [torch.float32], 6)
    assert row["passed"] is False and row["logit_err"] > 100 * row["logit_tol"]


def test_full_speed_phase_refused_on_a_cpu(tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "x")]) == 2
    assert "error: " in capsys.readouterr().err and not (tmp_path / "x").exists()
