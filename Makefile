# The README's quick start is `make demo` then `make test`; keep both working at every commit.
VENV := .venv
BIN := $(VENV)/bin
DEMO_VM ?= vmkeep-demo

.PHONY: setup demo test check lint typecheck imports unit fast clean-demo

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh "$(DEMO_VM)"

# Everything CI runs: lint, types, layer contracts, then every test suite.
test: setup check

check: lint typecheck imports
	$(BIN)/pytest tests/unit tests/contract tests/integration tests/system

lint:
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck:
	$(BIN)/mypy

imports:
	$(BIN)/lint-imports

# Quick loop while developing: no VM boots.
fast:
	$(BIN)/pytest -m "not slow" tests/unit tests/contract

clean-demo:
	-virsh destroy "$(DEMO_VM)-restored" >/dev/null 2>&1
	-virsh undefine "$(DEMO_VM)-restored" >/dev/null 2>&1
	$(BIN)/vmkeep lab destroy "$(DEMO_VM)" || true
	rm -rf /var/lib/vmkeep/demo /var/lib/vmkeep/restored/"$(DEMO_VM)-restored"
