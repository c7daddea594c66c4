# keras_initkit: every target bootstraps .venv on first use (CPU TensorFlow by default).
# GPU build: `make install EXTRA=gpu` (installs the full `tensorflow[and-cuda]` instead of tensorflow-cpu).
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRA  ?= cpu
PROFILE ?= quick
ENGINE ?= process
JOBS   ?= 2
STAMP  := $(VENV)/.installed-$(EXTRA)
STUDY  := $(BIN)/python -m keras_initkit.study.cli

export MPLBACKEND := Agg
export TF_CPP_MIN_LOG_LEVEL := 2
export KERAS_BACKEND ?= tensorflow
export PYTHONHASHSEED := 0

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[$(EXTRA),dev]"
	@touch $@

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

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

.PHONY: bench
bench: $(STAMP) ## Print measured speed and memory ratios (one run, never a timed test)
	$(BIN)/python -m benchmarks.run $(BENCH)

.PHONY: studies
studies: study-vgg study-sigmoid study-bn ## Run every study (PROFILE=quick|paper)

.PHONY: study-vgg
study-vgg: $(STAMP) ## VGG depth x init (He et al. 2015): results/vgg_depth/, docs/results/vgg_depth/
	$(STUDY) vgg_depth --profile $(PROFILE) --engine $(ENGINE) --jobs $(JOBS)

.PHONY: study-sigmoid
study-sigmoid: $(STAMP) ## Sigmoid vs ReLU (Glorot & Bengio 2010): results/sigmoid_vs_relu/
	$(STUDY) sigmoid_vs_relu --profile $(PROFILE) --engine $(ENGINE) --jobs $(JOBS)

.PHONY: study-bn
study-bn: $(STAMP) ## Batch norm (Ioffe & Szegedy 2015): results/batchnorm/
	$(STUDY) batchnorm --profile $(PROFILE) --engine $(ENGINE) --jobs $(JOBS)

.PHONY: clean
clean: ## Remove .venv, caches and results/
	rm -rf $(VENV) results .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
