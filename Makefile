# Two commands do all set-up from a fresh clone: `make demo` and `make test`.
# Each bootstraps the virtualenv (pinned by constraints.txt) and the npm packages
# for the local chain (anvil and solc, pinned by package-lock.json).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP_PY := $(VENV)/.installed
STAMP_NPM := node_modules/.installed

.PHONY: all install test demo lint fmt bench mutate clean

all: test

$(STAMP_PY): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

$(STAMP_NPM): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

install: $(STAMP_PY) $(STAMP_NPM)

test: install
	$(BIN)/ruff check bindu tests bench
	$(BIN)/ruff format --check bindu tests bench
	$(BIN)/mypy bindu
	$(PY) -m pytest -q

demo: install
	$(BIN)/bindu demo

# Figures, not timed tests: under 10 minutes on a 2-core machine; see docs/benchmarks.md.
bench: install
	$(PY) -m bench.run

# Mutation testing of the money-critical modules against the fast tests, fresh each time;
# not part of `make test` (minutes, not seconds). Score and survivors: docs/mutation.md.
mutate: $(STAMP_PY)
	$(PY) -m bench.mutation

lint: install
	$(BIN)/pre-commit run --all-files

fmt: install
	$(BIN)/ruff format bindu tests bench
	$(BIN)/ruff check --fix bindu tests bench

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache mutants
