# Everything runs from a private virtualenv made on first use; nothing needs root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint bench demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The suite runs inside a private network namespace (tests/media/netns.py): WebRTC media tests
# need a non-loopback interface that exists nowhere else; where namespaces are forbidden, the
# suite runs as is and the media tests skip, saying why.
test: install
	$(BIN)/python -m tests.media.netns -- $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

demo: install
	$(BIN)/python -m orchestrator demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
