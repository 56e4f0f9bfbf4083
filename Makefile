# Every target creates .venv and installs labelfix into it first, so each one works on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench bench-scale lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/labelfix demo

test: $(STAMP)
	$(BIN)/ruff check labelfix tests examples
	$(BIN)/ruff format --check labelfix tests examples
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python examples/matrix.py $(MATRIX_ARGS)
	$(BIN)/python examples/ablation.py
	$(BIN)/python examples/bench.py $(BENCH_ARGS)

bench-scale: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python examples/bench_scale.py $(SCALE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check labelfix tests examples

clean:
	rm -rf $(VENV) labelfix-out .pytest_cache
