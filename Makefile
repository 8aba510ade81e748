# The two commands of the quick start: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test install system-deps lint typecheck unit bench clean clean-testhosts

# Where the test hosts keep their image and their Docker daemon's data (see README, "Test hosts").
TESTHOSTS_CACHE ?= $(HOME)/.cache/turnout/testhosts
export TESTHOSTS_CACHE

$(BIN)/turnout-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/turnout-installed

demo: install
	$(BIN)/turnout demo

system-deps:
	bash scripts/install-system-deps.sh

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

# pytest in two passes (README, "Tests"): the tests not marked serial on TEST_WORKERS xdist
# workers, then the serial ones alone; the target fails if either pass failed.
TEST_WORKERS ?= 4

test: install system-deps lint typecheck
	PYTEST=$(BIN)/pytest TEST_WORKERS=$(TEST_WORKERS) bash scripts/run-tests.sh

bench: install system-deps
	$(BIN)/python bench/router_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

clean-testhosts:
	bash scripts/testhosts/clean.sh $(TESTHOSTS_CACHE)
