# Two commands on a fresh machine with only Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck audit unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fleet demo

lint: $(STAMP)
	$(BIN)/ruff check fleet agent tests bench
	$(BIN)/ruff format --check fleet agent tests bench

typecheck: $(STAMP)
	$(BIN)/mypy fleet agent bench

# Known vulnerabilities in the installed dependencies (pip-audit; tests/dependency_audit.py says
# so, and does not fail, when the vulnerability database cannot be reached).
audit: $(STAMP)
	$(BIN)/python -m tests.dependency_audit

# Test files run in parallel workers, each file whole in one worker (its module fixtures, such
# as the browser, start once), but the files of tests/conftest.py's SPREAD test by test, and
# its LONG_FIRST files first. Most tests wait on real brokers and processes, so more workers
# than cores pays; TEST_WORKERS=0 runs them one after the other.
TEST_WORKERS ?= 6

# The checks run beside the tests, not before them: pytest's workers mostly wait on brokers and
# processes, and ruff, mypy and the audit take the CPU they leave (about 20 s off the wall
# time). Any of them failing fails `make test`. Their output is not held back (make's
# --output-sync would hold pytest's until it ends), so the checks' few lines may land among
# pytest's progress dots.
test: $(STAMP)
	$(MAKE) --no-print-directory -j 4 lint typecheck audit unit

# The tests start many Python processes (controllers, agents, the CLI): their bytecode, and
# pytest's rewritten test modules, are kept under the venv even where the environment says not
# to write any (PYTHONDONTWRITEBYTECODE), so that each is compiled once, not in every process.
# One collection first fills that cache (about 9 s of CPU, beside ruff and mypy under `make
# test`); each worker then collects in about 3 s rather than 9.
BYTECODE := PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(CURDIR)/$(VENV)/pycache
unit: $(STAMP)
	@$(BYTECODE) $(BIN)/python -m pytest -q -p no:cacheprovider --collect-only \
		> $(VENV)/collect.log 2>&1 || { cat $(VENV)/collect.log; exit 1; }
	$(BYTECODE) $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) \
		--dist loadfile --durations=15 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
