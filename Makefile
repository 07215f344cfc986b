# Two commands on a fresh machine: `make run` and `make test`. Both install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test unit lint format bench soak screenshot clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python -m launcher

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest

# The tests that start no Ray cluster and no service (tests/conftest.py marks the rest `cluster`).
unit: install
	$(BIN)/python -m pytest -m "not cluster"

bench: install
	$(BIN)/python -m bench.run

soak: install
	$(BIN)/python -m bench.soak

# Needs Debian's chromium package (apt-get install chromium).
screenshot: install
	$(BIN)/python -m scripts.dashboard_screenshot

clean:
	rm -rf $(VENV) build *.egg-info
