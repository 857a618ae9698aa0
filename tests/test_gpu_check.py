"""The GPU check runs on a CPU at tiny sizes (``--device cpu --small``), so it cannot rot between GPU sessions.

Its checks are themselves tested: the kept-set comparison against hand-made differences, the
attention check against a deliberately wrong path, the time budget against a budget nothing fits.
"""

import csv
import json
import statistics
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
        "sweep.csv",
        "gpu_check.json",
        "summary.md",
    }
    assert results["errors"] == [] and results["skipped"] == []
    summary = (out / "summary.md").read_text()
    assert summary.split("## The runner's sweep")[0].count("**PASS**") == 3  # the correctness checks


def test_small_run_covers_the_runners_sweep(small_run):
    """The sweep phase ran run.py twice on the same samples; the sweep's full cache predicted exactly
    what the single full run did; the wall-time ratio is the ratio of the two rows' walls."""
    out, results = small_run
    phase = results["sweep_phase"]
    assert phase["meta"]["same_samples"] is True
    rows = {r["run"]: r for r in read_csv(out / "sweep.csv")}
    assert set(rows) == {"full", "sweep"}
    ratio = float(rows["sweep"]["samples_s"]) / float(rows["full"]["samples_s"])
    assert float(rows["sweep"]["wall_ratio"]) == pytest.approx(ratio, rel=1e-6)
    assert "the runner's sweep against a single full run" in (out / "summary.md").read_text().lower()


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
    methods = ["full@budget", "snapkv", "pyramidkv", "adakv", "cake", "cake_cascading", "lava"]
    assert got == [("full", "")] + [(m, str(b)) for b in budgets for m in methods]
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


def test_perf_repeats_report_medians_with_their_spread(small_run):
    out, results = small_run
    rows = read_csv(out / "perf.csv")
    sizes = gpu_check.SMALL_SIZES
    top = str(max(sizes["perf_budgets"]))
    acceptance_rows = {("full@budget", top), ("adakv", top), ("lava", top)}
    for r in rows:
        runs = [float(x) for x in r["decode_tok_s_runs"].split()]
        assert len(runs) == int(r["decode_runs"]) == sizes["decode_repeats"]
        assert float(r["decode_tok_s_min"]) <= float(r["decode_tok_s"]) <= float(r["decode_tok_s_max"])
        assert float(r["decode_tok_s_min"]) == pytest.approx(min(runs), rel=1e-5)
        assert float(r["decode_tok_s_max"]) == pytest.approx(max(runs), rel=1e-5)
        assert float(r["decode_tok_s"]) == pytest.approx(statistics.median(runs), rel=1e-5)
        assert float(r["prefill_s_min"]) <= float(r["prefill_s"]) <= float(r["prefill_s_max"])
        want = sizes["prefill_repeats"] if (r["method"], r["budget"]) in acceptance_rows else 1
        assert int(r["prefill_runs"]) == want
        assert float(r["warmup_tok_s"]) > 0
        # every timed repeat decoded the warm-up's tokens: the cache was rewound to its prompt each time
        assert r["same_tokens"] == "True"
    # decode_vs_ceiling: the row's median over its budget's full@budget median
    ceilings = {r["budget"]: float(r["decode_tok_s"]) for r in rows if r["method"] == "full@budget"}
    for r in rows[1:]:
        assert float(r["decode_vs_ceiling"]) == pytest.approx(
            float(r["decode_tok_s"]) / ceilings[r["budget"]]
        )
    protocol = results["perf_meta"]["protocol"]
    assert {"kernel_warmup", "rounds", "prefill_repeats", "reported", "memory"} <= set(protocol)


def test_memory_allowance_is_budget_kv_plus_one_layer_of_prompt_kv(small_run):
    out, _ = small_run
    rows = read_csv(out / "perf.csv")
    checked = 0
    for r in rows:
        if r["method"] in ("full", "full@budget"):  # no compressor: no allowance
            assert r["mem_allowance_bytes"] == "" and r["mem_target_passed"] == ""
            continue
        b, n = int(r["budget"]), int(r["prompt_tokens"])
        budget_kv = 3 * 2 * b * 2 * 16 * 4  # tiny model: 3 layers, 2 KV heads of 16, fp32
        layer_kv = 2 * n * 2 * 16 * 4  # one layer, every prompt token
        assert int(r["layer_prompt_kv_bytes"]) == layer_kv
        assert float(r["mem_allowance_bytes"]) == pytest.approx(1.1 * (budget_kv + layer_kv))
        assert r["mem_target_passed"] == ""  # no device memory counter on a CPU
        checked += 1
    assert checked == 2 * 6


def test_acceptance_checks_in_json_and_summary(small_run):
    out, results = small_run
    checks = results["acceptance"]
    top = max(gpu_check.SMALL_SIZES["perf_budgets"])
    decode = [(c["method"], c["budget"]) for c in checks if c["check"] == "decode vs full@budget"]
    assert decode == [("lava", top), ("adakv", top)]
    rows = {(r["method"], r["budget"]): r for r in read_csv(out / "perf.csv")}
    for c in checks:
        if c["check"] == "decode vs full@budget":
            r, ceiling = rows[(c["method"], str(top))], rows[("full@budget", str(top))]
            assert c["value"] == pytest.approx(float(r["decode_tok_s"]) / float(ceiling["decode_tok_s"]))
            assert c["passed"] is None  # 2 timed decodes on a CPU: fewer than the 3 the target needs
    budgets = gpu_check.SMALL_SIZES["perf_budgets"]
    assert [c["budget"] for c in checks if c["check"] == "cake_cascading peak vs snapkv"] == budgets
    memory = [(c["method"], c["budget"]) for c in checks if c["check"] == "memory target"]
    assert memory == [(m, b) for b in budgets for m in ("lava", "adakv", "snapkv", "cake", "cake_cascading")]
    summary = (out / "summary.md").read_text()
    assert "### Acceptance" in summary and summary.count("- memory target @") == len(budgets)
    assert "cake_cascading peak vs snapkv" in summary


def test_memory_target_and_acceptance_verdicts_on_hand_made_gpu_rows():
    """What a GPU run would give: Llama-3.1-8B's shape in bf16, 32k prompt, memory in bytes."""
    from types import SimpleNamespace

    from eval.gpu_check import report
    from eval.gpu_check.perf import add_ratios

    config = SimpleNamespace(num_hidden_layers=32, num_key_value_heads=8, head_dim=128)
    gib, mib = 2**30, 2**20
    weights, activations = 15 * gib, 3.5 * gib

    def row(method, budget, tok_s, runs, above, prompt=32768):
        return {"method": method, "budget": budget, "prompt_tokens": prompt, "prefill_s": 2.0,
                "decode_tok_s": tok_s, "decode_tok_s_min": tok_s - 1, "decode_tok_s_max": tok_s + 1,
                "decode_runs": runs, "kv_bytes": 1, "peak_bytes": weights + above,
                "peak_decode_bytes": weights + 0.3 * gib}  # fmt: skip

    # allowance at 2048: (256 MiB budget KV + 128 MiB one layer's 32k prompt KV) x 1.1 = 422.4 MiB;
    # at 512: (64 + 128) x 1.1 = 211.2 MiB
    rows = [
        row("full", "", 18.0, 3, 8 * gib),
        row("full@budget", 2048, 60.0, 3, 0.3 * gib, prompt=2048),
        row("lava", 2048, 57.0, 3, activations + 420 * mib),  # 0.95 x ceiling; memory just inside
        row("adakv", 2048, 50.0, 3, activations + 425 * mib),  # 0.83 x; memory just outside
        row("snapkv", 2048, 55.0, 3, activations + 400 * mib),
        row("cake", 2048, 55.0, 3, 7.6 * gib),
        row("cake_cascading", 2048, 55.0, 3, activations + 430 * mib),  # above weights 1.0075 x snapkv
        row("full@budget", 512, 62.0, 2, 0.1 * gib, prompt=512),
        row("lava", 512, 61.0, 2, activations + 200 * mib),  # 2 runs: no decode verdict at 512 anyway
        row("snapkv", 512, 61.0, 2, activations + 180 * mib),
        row("cake_cascading", 512, 61.0, 2, 4.2 * gib),  # 4.2 GiB / 3.68 GiB = 1.14 x snapkv
    ]
    add_ratios(rows, weights, activations, config, torch.bfloat16)
    by = {(r["method"], r["budget"]): r for r in rows}
    assert by[("lava", 2048)]["mem_allowance_bytes"] == pytest.approx(422.4 * mib)
    assert by[("lava", 512)]["mem_allowance_bytes"] == pytest.approx(211.2 * mib)
    assert (
        by[("lava", 2048)]["mem_target_passed"] is True and by[("adakv", 2048)]["mem_target_passed"] is False
    )
    assert by[("cake", 2048)]["mem_target_passed"] is False
    assert "mem_allowance_bytes" not in by[("full@budget", 2048)]
    checks = {(c["check"], c["method"], c["budget"]): c for c in report.acceptance({"perf": rows})}
    lava, adakv = (
        checks[("decode vs full@budget", "lava", 2048)],
        checks[("decode vs full@budget", "adakv", 2048)],
    )
    assert lava["value"] == pytest.approx(0.95) and lava["passed"] is True
    assert adakv["value"] == pytest.approx(50 / 60) and adakv["passed"] is False
    assert ("decode vs full@budget", "lava", 512) not in checks  # only the largest budget
    cascade = checks[("cake_cascading peak vs snapkv", "cake_cascading", 2048)]
    assert cascade["passed"] is True and "cake (default, non-cascading) 7.60 GiB" in cascade["detail"]
    assert checks[("cake_cascading peak vs snapkv", "cake_cascading", 512)]["passed"] is False
    assert checks[("memory target", "snapkv", 512)]["passed"] is True
    lines = report.acceptance_lines(list(checks.values()))
    assert "lava 0.99 PASS, adakv 1.01 FAIL, snapkv 0.95 PASS, cake 9.94 FAIL" in lines[-2]


def test_a_method_that_fails_to_build_is_an_error_row(tmp_path):
    assert gpu_check.main(["--device", "cpu", "--small", "--out", str(tmp_path), "--phases", "perf",
                           "--perf-methods", "snapkv", "no_such_method"]) == 0  # fmt: skip
    rows = read_csv(tmp_path / "perf.csv")
    broken = [r for r in rows if r["method"] == "no_such_method"]
    assert [r["budget"] for r in broken] == [str(b) for b in gpu_check.SMALL_SIZES["perf_budgets"]]
    assert all("unknown method" in r["error"] and r["decode_tok_s"] == "" for r in broken)
    assert all(float(r["decode_tok_s"]) > 0 for r in rows if r["method"] == "snapkv")
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert len(results["errors"]) == 2 and "no_such_method" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("name", ["full", "full@budget", "snapkv", "lava"])
def test_rewound_cache_decodes_like_a_fresh_prefill(name):
    """Decode, rewind, decode again: the same tokens and logits as a fresh prefill's first decode."""
    from eval.gpu_check import perf
    from eval.gpu_check.models import TINY, random_llama
    from lava.compat import cache_kwargs

    model = random_llama(TINY, torch.float32, "cpu")
    ids = torch.randint(0, TINY["vocab_size"], (1, 200), generator=torch.Generator().manual_seed(3))
    state, _ = perf.prefill(model, "tiny", ids, name, 64, 6)
    first = perf.decode(model, state, 6)
    assert state.cache.get_seq_length() == state.prompt_len == (64 if name == "full@budget" else 200)
    again = perf.decode(model, state, 6)
    fresh, _ = perf.prefill(model, "tiny", ids, name, 64, 6)
    assert first["tokens"] == again["tokens"] == perf.decode(model, fresh, 6)["tokens"]
    # and the logits after the rewind are the fresh cache's, bit for bit on a CPU
    with torch.inference_mode():
        perf.use_attention(model, name)
        step = [model(input_ids=s.first_token, **cache_kwargs(model, s.cache)).logits for s in (state, fresh)]
    assert torch.equal(step[0], step[1])


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
        def build_cache(self, model, max_new_tokens):
            return SkewedCache(config=model.config)

    monkeypatch.setattr(tokens, "build_named_method", lambda *args: SkewedMethod())
    model = random_llama(TINY, torch.float32, "cpu")
    ids = torch.randint(0, TINY["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(0))
    (row,) = tokens.token_identity(model, "tiny", ids, ["skewed"], "cpu", [torch.float32], 6)
    assert row["passed"] is False and row["logit_err"] > 100 * row["logit_tol"]


def test_full_speed_phase_refused_on_a_cpu(tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "x")]) == 2
    assert "error: " in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_small_run_times_the_batched_padded_attention_per_backend(small_run):
    """Every (batch, backend) pair has a row: a time, or why the backend could not run."""
    _, results = small_run
    rows = results["attention_batched"]
    assert {(r["batch"], r["backend"]) for r in rows} == {
        (b, k)
        for b in gpu_check.SMALL_SIZES["attention_batches"]
        for k in ("default", "efficient", "cudnn", "math")
    }
    timed = [
        r["us_per_call"] is not None and r["us_per_call"] == r["us_per_call"] for r in rows
    ]  # JSON: NaN -> null
    assert all(t != bool(r["note"]) for t, r in zip(timed, rows))  # a time xor the reason there is none
    assert all(r["us_per_call"] > 0 for r in rows if r["backend"] in ("default", "math"))
