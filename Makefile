# Set-up and the two everyday jobs. `make demo` and `make test` create .venv on first use (and again
# only when pyproject.toml changes), so each is the single command a fresh clone needs.
PYTHON ?= python3
VENV ?= .venv
# Where torch 2.13.0 comes from. On machines whose pip finds the CPU build locally, nothing is needed;
# elsewhere pass e.g. TORCH_PIP_ARGS="--index-url <PyTorch's CPU wheel index>" to avoid CUDA wheels.
TORCH_PIP_ARGS ?=
PIP = $(VENV)/bin/python -m pip
STAMP = $(VENV)/.installed

export MUJOCO_GL ?= egl

.PHONY: install demo demo-llm test bench bench-official clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "torch==2.13.0" $(TORCH_PIP_ARGS)
	$(PIP) install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

# The main job on its embedded default: `vgf pipeline` (local MLflow store under ./.vgf; a
# cube-single-noisy dataset collected here; VGF on task1 at the quick preset; evaluation at budgets
# 0-3), 3.4-4.1 minutes on 2 AVX-512 cores, 4.2-4.7 forced to fp32 AVX2 (README, "What the demo shows").
# Run again: all cache hits. DEMO_ARGS takes Hydra overrides.
DEMO_ARGS ?=
demo: $(STAMP)
	$(VENV)/bin/vgf pipeline $(DEMO_ARGS)
	$(VENV)/bin/vgf runs --limit 6

# VGF on language models, on its embedded default: prompts from the demo corpus, a GPT-2-shaped LM and a
# reward model made here, 200 held-out prompts at N = 8 and L = 0..3 (README, "Language models").
demo-llm: $(STAMP)
	$(VENV)/bin/vgf pipeline domain=llm $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -n auto --dist worksteal

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_ingest.py
	$(VENV)/bin/python bench/bench_collect.py
	$(VENV)/bin/python bench/bench_vgf_update.py --preset paper --bank both
	$(VENV)/bin/python bench/bench_bank_refresh.py --preset quick
	$(VENV)/bin/python bench/bench_bank_refresh.py --preset paper
	$(VENV)/bin/python bench/bench_stages.py --preset paper
	$(VENV)/bin/python bench/bench_stages.py --preset quick
	$(VENV)/bin/python bench/bench_methods.py --preset quick
	$(VENV)/bin/python bench/bench_methods.py --preset paper --steps 3

# vgf against the official JAX code (scratch clone + venv under $TMPDIR, never in the repo).
bench-official: $(STAMP)
	$(VENV)/bin/python bench/bench_vs_official.py --setup
	$(VENV)/bin/python bench/bench_vs_official.py --threads 2
