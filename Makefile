# `make demo` and `make test` do all set-up themselves on a fresh machine.
VENV := .venv
BIN := $(VENV)/bin
DEMO_RUN ?= runs/demo
DEMO_ARGS ?=  # e.g. make demo DEMO_ARGS="--recipe ibot_vit_tiny_patch4_28 --minutes 15"

.PHONY: setup data demo lint test test-fast bench clean

setup:
	@bash scripts/setup.sh

data:
	@bash scripts/get_data.sh

demo: setup data
	$(BIN)/mimkit demo --out $(DEMO_RUN) $(DEMO_ARGS)

# `ruff format` is checked on the files written since the formatter came in (the rest keeps its
# hand-wrapped style; formatting all of it would be one large diff): add a file here when it is formatted.
FORMATTED := mimkit/files.py mimkit/data/__init__.py mimkit/data/build.py mimkit/data/fashion_mnist.py \
	mimkit/data/images.py mimkit/data/seeds.py mimkit/data/tensors.py mimkit/data/transforms.py \
	mimkit/tokenizer/weights.py mimkit/schedules.py mimkit/methods/__init__.py tests/test_architecture.py \
	tests/test_committed_paths.py tests/test_schedules.py mimkit/eval/trials.py

# lint (ruff), format check, the import contracts of pyproject.toml (layers, no cycles)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check $(FORMATTED)
	$(BIN)/lint-imports

test: setup data lint
	$(BIN)/python -m pytest -n 2 -q --durations=15 tests

test-fast: setup lint
	$(BIN)/python -m pytest -n 2 -q tests -m "not slow"

clean:
	rm -rf runs .pytest_cache
