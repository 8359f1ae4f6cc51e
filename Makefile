# The README's two commands: `make demo` and `make test`. Each sets up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the builds that lie on local disk on our machines.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: venv test test-fast container-check demo bench lint clean mutation

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

lint: venv
	$(BIN)/ruff check kdsearch tests bench
	$(BIN)/ruff format --check kdsearch tests bench
	$(BIN)/python -m mypy

test: venv lint
	$(BIN)/pytest -q -n 2 --dist worksteal

test-fast: venv
	$(BIN)/pytest -q -n 2 --dist worksteal -m "not slow"

# Builds the worker image and runs a study in containers (docs/containers.md): minutes.
container-check: venv
	KDSEARCH_CONTAINER_CHECK=1 $(BIN)/pytest -q tests/test_containers.py

# Mutation testing of the modules that decide results (docs/testing.md): one module at a time,
# one child process; tens of minutes, not part of `make test`. Results stay in mutants/, so a
# second run retests only what changed; `$(BIN)/mutmut show NAME` prints a survivor's diff.
MUTATE := kdsearch.search.ranking kdsearch.search.confidence kdsearch.files kdsearch.distill \
	kdsearch.config.spec kdsearch.redact

mutation: venv
	$(BIN)/pip install -q -e '.[mutation]'
	for m in $(MUTATE); do $(BIN)/mutmut run --max-children 1 "$$m.*" || exit 1; done
	$(BIN)/mutmut results --all true | sed 's/ *\(.*\)\.x[_ǁ][^:]*: / \1 /' | sort | uniq -c

demo: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m kdsearch.demo

bench: venv
	$(BIN)/kdsearch bench --device cpu

clean:
	rm -rf $(VENV) .pytest_cache kdsearch.egg-info
