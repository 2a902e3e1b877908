# cxr-pneumonia: every target runs in .venv/ and installs it first when it is missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
UV_VERSION := 0.13.8
export UV_PYTHON_DOWNLOADS := never
export PYTHONPATH := $(CURDIR)

.PHONY: install demo up down test lint bench train explore clean

install: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	uv sync --frozen --python python3.11
	@touch $@

demo: install
	$(PY) scripts/demo.py

up: install
	$(PY) scripts/stack.py up

down: install
	$(PY) scripts/stack.py down

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check shared services tests bench scripts
	$(VENV)/bin/mypy shared

bench: install
	$(PY) -m bench

train: install
	$(PY) -m services.trainer train

explore: install
	$(PY) -m services.trainer explore --out out/explore

clean:
	rm -rf $(VENV) var out
