# Two entry points that work on a fresh machine (Python 3.11, no GPU):
#   make demo   -- set up, then convert the shipped MNIST CNN and print its figures
#   make test   -- set up, then lint and run the test suite
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup demo test lint bench

$(BIN)/onespike: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/onespike

setup: $(BIN)/onespike

demo: setup
	$(BIN)/onespike demo

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

test: lint
	$(BIN)/pytest -q -n auto --dist loadfile

bench: setup
	$(BIN)/python benchmarks/speed.py
