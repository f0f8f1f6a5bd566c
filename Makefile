# Two commands do all the set-up on a fresh machine:
#   make run    installs the core (+ clinical and train extras) and trains the embedded default
#   make test   installs the test dependencies and runs lint, layer checks and the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The default cluster's world-model Examiner uses numpy (the `clinical` extra); its agent and
# learner use torch and transformers (the `train` extra, torch pinned to the CPU build).
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[clinical,train]'
	touch $@

# torch is pinned to the CPU build in pyproject.toml; an unpinned torch would pull CUDA.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,clinical,train,embed]'
	touch $@ $(VENV)/.core

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,clinical,train,embed,bench]'
	touch $@ $(VENV)/.dev $(VENV)/.core

run: $(VENV)/.core
	$(BIN)/python -m engine.cluster up

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# pytest exits 5 when it collects no test: that is a failure here, not a pass.
test: lint
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
