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

test: install system-deps lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

bench: install system-deps
	$(BIN)/python bench/router_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

clean-testhosts:
	bash scripts/testhosts/clean.sh $(TESTHOSTS_CACHE)
