# The two commands of the README. Both set everything up first (scripts/setup.sh).
VENV ?= .venv
OUT ?= runs/fashion-mnist-shirts

.PHONY: setup demo demo-fast test bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: setup  ## train, certify and report on Fashion-MNIST T-shirt vs shirt (asymcert's default recipe)
	$(VENV)/bin/asymcert run fashion-mnist-shirts --out $(OUT)

demo-fast: setup  ## the same with the 'fast' preset (a quick look, under a minute after set-up)
	$(VENV)/bin/asymcert run fashion-mnist-shirts --preset fast --out $(OUT)-fast

test: setup  ## lint (ruff), format check, type check (mypy), then the whole test suite
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest
