# Everything runs from a private virtualenv made on first use; nothing needs root.
# The interpreter: PYTHON if given, else the first of python3, python3.13, python3.12 and
# python3.11 (or a pyenv install of one of them) that is a supported version, 3.11 to 3.13.
SUPPORTED := import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))
CANDIDATES := python3 python3.13 python3.12 python3.11 \
	$(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3) \
	$(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3) \
	$(wildcard $(HOME)/.pyenv/versions/3.11*/bin/python3)
PYTHON ?= $(firstword $(foreach p,$(CANDIDATES),$(shell $(p) -c '$(SUPPORTED)' 2>/dev/null && echo $(p))))
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint bench demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
		echo "lk-dispatch needs Python 3.11, 3.12 or 3.13 and found none: make PYTHON=/path/to/python3.13"; \
		exit 1; fi
	@$(PYTHON) -c '$(SUPPORTED)' 2>/dev/null || { \
		echo "lk-dispatch needs Python 3.11, 3.12 or 3.13; $(PYTHON) is $$($(PYTHON) --version 2>&1)"; \
		exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The suite runs inside a private network namespace (tests/media/netns.py): WebRTC media tests
# need a non-loopback interface that exists nowhere else; where namespaces are forbidden, the
# suite runs as is and the media tests skip, saying why.
test: install
	$(BIN)/python -m tests.media.netns -- $(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick loop: the tests that run inside the test process (tests/conftest.py CATEGORIES),
# with a real Redis and the LiveKit stand-in; no worker processes, no browser, no WebRTC. Spread
# over the cores (pytest-xdist): each pytest worker starts its own Redis.
test-fast: install
	$(BIN)/python -m pytest -m "unit or integration" -n auto -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

demo: install
	$(BIN)/python -m orchestrator demo

clean:
	rm -rf $(VENV) .venv-* .pytest_cache .mypy_cache .ruff_cache .hypothesis
