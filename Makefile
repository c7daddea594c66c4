# keras_initkit: every target bootstraps .venv on first use (CPU TensorFlow by default).
# GPU build: `make install EXTRA=gpu` (installs the full `tensorflow[and-cuda]` instead of tensorflow-cpu).
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  := $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 1)
# The variables `make help` lists (the defaults equal the CLI's: python -m keras_initkit study --help)
EXTRA  ?= cpu
PROFILE ?= quick
ENGINE ?= process
JOBS   ?= $(CORES)
HELP_EXTRA   := cpu|gpu: the TensorFlow build installed into .venv (a pip extra), with the dev tools
HELP_PROFILE := quick|paper|smoke: the Config preset of each study
HELP_ENGINE  := serial|process|ray: where trials run
HELP_JOBS    := trials at once (default: every core); ENGINE=ray without JOBS: the CPUs of the Ray cluster
STAMP  := $(VENV)/.installed-$(EXTRA)
STUDY  := $(BIN)/python -m keras_initkit study
STUDIES := vgg_depth sigmoid_vs_relu batchnorm rnn_memory lsuv_init
# --jobs, except for ENGINE=ray with the default JOBS (then Ray uses the cluster's CPUs)
JOBS_FLAG = $(if $(and $(filter ray,$(ENGINE)),$(filter file,$(origin JOBS))),,--jobs $(JOBS))
RUN_STUDY = $(STUDY) $(1) --profile $(PROFILE) --engine $(ENGINE) $(strip $(JOBS_FLAG) --compare docs/results)

export MPLBACKEND := Agg
export TF_CPP_MIN_LOG_LEVEL := 2
export KERAS_BACKEND ?= tensorflow
export PYTHONHASHSEED := 0

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[$(EXTRA),dev]"
	@touch $@

.PHONY: help
help: ## List the targets and the variables, with their defaults
	@echo "Targets:"
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'
	@echo "Variables (e.g. make study-vgg PROFILE=smoke JOBS=4):"
	@$(foreach v,EXTRA PROFILE ENGINE JOBS,printf '  \033[36m%-16s\033[0m %s\n' '$(v)=$($(v))' '$(HELP_$(v))';)

.PHONY: install
install: $(STAMP) ## Create .venv and install the package (EXTRA=cpu|gpu) with dev tools

.PHONY: lint
lint: $(STAMP) ## ruff check + ruff format --check
	$(BIN)/ruff check keras_initkit studies tests benchmarks
	$(BIN)/ruff format --check keras_initkit studies tests benchmarks

.PHONY: format
format: $(STAMP) ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix keras_initkit studies tests benchmarks
	$(BIN)/ruff format keras_initkit studies tests benchmarks

.PHONY: test
test: $(STAMP) ## Run the test suite (fails when no test ran)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

.PHONY: test-torch
test-torch: $(STAMP) ## Install torch (on demand: not in dev, its wheels are large) and run the backend tests with it
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pytest -q tests/test_monitor_backends.py tests/test_initializers.py -k "torch"

.PHONY: bench
bench: $(STAMP) ## Print measured speed and memory ratios (one run, never a timed test); also in results/bench/
	$(BIN)/python -m benchmarks.run --out results/bench $(BENCH)

.PHONY: docs-bench
docs-bench: $(STAMP) ## Run the benchmarks and publish their output to docs/results/benchmarks/ (the README's figures)
	$(BIN)/python -m benchmarks.run --out docs/results/benchmarks $(BENCH)

.PHONY: studies
studies: study-vgg study-sigmoid study-bn study-rnn study-lsuv ## Run every study (PROFILE=quick|paper|smoke), writing only results/

.PHONY: study-vgg
study-vgg: $(STAMP) ## VGG depth x init (He et al. 2015): results/vgg_depth/<profile>/
	$(call RUN_STUDY,vgg_depth)

.PHONY: study-sigmoid
study-sigmoid: $(STAMP) ## Sigmoid vs ReLU (Glorot & Bengio 2010): results/sigmoid_vs_relu/<profile>/
	$(call RUN_STUDY,sigmoid_vs_relu)

.PHONY: study-bn
study-bn: $(STAMP) ## Batch norm (Ioffe & Szegedy 2015): results/batchnorm/<profile>/
	$(call RUN_STUDY,batchnorm)

.PHONY: study-rnn
study-rnn: $(STAMP) ## Memory through time, tanh RNN vs LSTM vs IRNN (Pascanu et al. 2013): results/rnn_memory/<profile>/
	$(call RUN_STUDY,rnn_memory)

.PHONY: study-lsuv
study-lsuv: $(STAMP) ## LSUV init (Mishkin & Matas 2016) vs N(0, 0.01), Xavier, He: results/lsuv_init/<profile>/
	$(call RUN_STUDY,lsuv_init)

.PHONY: docs-results
docs-results: $(STAMP) ## Run each study's quick profile and publish it to the committed docs/results/<study>/
	set -e; $(foreach s,$(STUDIES),$(STUDY) $(s) --profile quick --engine $(ENGINE) $(JOBS_FLAG) --publish docs/results;)

.PHONY: clean
clean: ## Remove .venv, caches and results/
	rm -rf $(VENV) results .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
