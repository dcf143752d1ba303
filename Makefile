# Two entry points for a new user: `make run` (main job) and `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	# torch first: the pinned CPU wheel, so nothing below pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"

run: install
	$(BIN)/python -m metasym.train $(ARGS)

test: install
	$(BIN)/python -m pytest tests $(ARGS)

lint: install
	$(BIN)/ruff check metasym tasks tests benchmarks
	$(BIN)/mypy
