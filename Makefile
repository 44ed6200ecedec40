# max-whisper over a plain virtual environment (.venv).  pixi.toml offers the same tasks for pixi users;
# pixi cannot run on the project's CI machines, so this Makefile is what CI and the README use.
#
#   make transcribe           install (once) and transcribe the demo clip with the embedded tiny.en
#   make test                 install (once) and run the test suite
#   make help                 list every target
#
# Variables: AUDIO=file (make transcribe / test-*), ARGS="--extra flags" (transcribe, test-*, demo,
# benchmark*), OUTPUT_DIR=dir, BENCH_AUDIO=file, PYTEST_ARGS="-k cli", PYTHON=python3.11

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.max-whisper-installed
CONSTRAINTS := constraints.txt
EXTRAS      ?= max,bench,test,ray,lint

DEMO_AUDIO  := audio_samples/demo.wav
AUDIO       ?= $(DEMO_AUDIO)
OUTPUT_DIR  ?= results/transcripts
LONGFORM    := ../shared/audio/longform_ljspeech_LJ001-0001_to_0032.flac
BENCH_AUDIO ?= $(if $(wildcard $(LONGFORM)),$(LONGFORM),$(DEMO_AUDIO))
RESULTS     := results
ARGS        ?=
PYTEST_ARGS ?=

MAX_WHISPER := $(BIN)/max-whisper

.PHONY: help install transcribe graph-test lint test test-cpu test-gpu test-max demo benchmark \
        benchmark-json benchmark-save clean distclean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-15s %s\n", $$1, $$2}'

# The stamp is rebuilt only when the venv is missing or the requirements change, so every other
# target can depend on it at no cost.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	@touch $@

install: $(STAMP) ## create .venv and install max-whisper with the pinned versions (idempotent)

transcribe: $(STAMP) ## transcribe $(AUDIO) (default: the demo clip) with the embedded tiny.en on the CPU
	$(MAX_WHISPER) transcribe $(AUDIO) --output-dir $(OUTPUT_DIR) $(ARGS)
	@echo "outputs: $(OUTPUT_DIR)/"

graph-test: $(STAMP) ## MAX Graph sanity check: layer_norm -> matmul -> gelu compared with NumPy
	$(BIN)/python benchmarks/graph_test.py

lint: $(STAMP) ## ruff: lint and format check (configured in pyproject.toml)
	$(BIN)/ruff check max-whisper tests benchmarks
	$(BIN)/ruff format --check max-whisper tests benchmarks

test: $(STAMP) ## run the test suite (pytest)
	$(BIN)/python -m pytest -q tests/ $(PYTEST_ARGS)

test-cpu: $(STAMP) ## transcribe the demo clip with the cpu backend (PyTorch)
	$(MAX_WHISPER) transcribe $(AUDIO) --backend cpu --output-dir $(RESULTS)/test-cpu $(ARGS)

test-gpu: $(STAMP) ## transcribe the demo clip with the gpu backend (PyTorch CUDA; fails clearly without CUDA)
	$(MAX_WHISPER) transcribe $(AUDIO) --backend gpu --output-dir $(RESULTS)/test-gpu $(ARGS)

test-max: $(STAMP) ## transcribe the demo clip with the max backend (MAX Graph)
	$(MAX_WHISPER) transcribe $(AUDIO) --backend max --output-dir $(RESULTS)/test-max $(ARGS)

demo: $(STAMP) ## the demo clip through every backend, side by side
	$(MAX_WHISPER) demo $(ARGS)

benchmark: $(STAMP) ## time every backend on $(BENCH_AUDIO) (long-form clip if present), table on stdout
	$(MAX_WHISPER) benchmark --audio $(BENCH_AUDIO) $(ARGS)

benchmark-json: $(STAMP) ## the same as JSON, on stdout and in results/benchmark.json
	@mkdir -p $(RESULTS)
	$(MAX_WHISPER) benchmark --audio $(BENCH_AUDIO) --json $(ARGS) | tee $(RESULTS)/benchmark.json

benchmark-save: $(STAMP) ## run the benchmark and append it to results/benchmarks.jsonl
	@mkdir -p $(RESULTS)
	$(MAX_WHISPER) benchmark --audio $(BENCH_AUDIO) --save $(RESULTS)/benchmarks.jsonl $(ARGS)

clean: ## remove results/, caches and build debris (keeps .venv and the converted model cache)
	rm -rf $(RESULTS) .pytest_cache build dist
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
