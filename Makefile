# radnode: set-up, run, test, demo, benchmark.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
CONFIG ?= settings.toml
STAMP  := $(VENV)/.installed

.PHONY: install run test lint demo bench train clean

install: $(STAMP)

# torch==2.13.0 first: it is the CPU build the project pins; installing
# monai (or any other torch spec) first would pull the CUDA stack.
$(STAMP): pyproject.toml deploy/install-tools.sh
	bash deploy/install-tools.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,science,postgres]'
	touch $(STAMP)

run: install
	$(VENV)/bin/radnode serve --config $(CONFIG)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q

demo: install
	$(PY) deploy/demo.py

bench: install
	$(PY) deploy/bench.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
