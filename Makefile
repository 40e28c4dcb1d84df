# `make demo` and `make test` do all set-up themselves on a fresh machine.
VENV := .venv
BIN := $(VENV)/bin
DEMO_RUN ?= runs/demo

.PHONY: setup data demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

data:
	@bash scripts/get_data.sh

demo: setup data
	$(BIN)/mimkit demo --out $(DEMO_RUN)

test: setup data
	$(BIN)/python -m pytest -n 2 -q tests

test-fast: setup
	$(BIN)/python -m pytest -n 2 -q tests -m "not slow"

clean:
	rm -rf runs .pytest_cache
