# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install the package with its test extras first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install tools demo test lint unit integration stack-up stack-down bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/pme-exporter demo

lint: install
	$(BIN)/ruff check src tests benchmarks deploy
	$(BIN)/ruff format --check src tests benchmarks deploy
	$(BIN)/mypy

# promtool, for the alert rules' unit tests (Debian's prometheus package).
tools:
	deploy/local/tools

test: lint tools
	$(BIN)/pytest

unit: install tools
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

stack-up:
	deploy/local/up

stack-down:
	deploy/local/down

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
