# Two commands on a fresh machine (Python >= 3.10):
#
#   make demo   # set up .venv on first use, then train + evaluate the demo (python train.py)
#   make test   # same set-up, then the test suite (pytest -q)
#
# The virtual environment is created and filled once; it is refilled when setup.cfg or
# pyproject.toml change. Variables: VENV (where the environment lives), PYTHON (the interpreter
# that creates it), TORCH (the torch requirement), PIP_ARGS (extra pip arguments, e.g. an index),
# PYTEST_ARGS (extra pytest arguments), e.g. `make test VENV=.venv-ci PYTEST_ARGS="-x"`.

VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
PIP_ARGS ?=
PYTEST_ARGS ?=

VENV_PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.pannuke-hf-installed

.DEFAULT_GOAL := help
.PHONY: help demo test setup

help:
	@echo "make demo   set up $(VENV) (first run only) and run the demo: python train.py"
	@echo "make test   set up $(VENV) (first run only) and run the tests: pytest -q"
	@echo "variables:  VENV=$(VENV) PYTHON=$(PYTHON) TORCH=$(TORCH)"

setup: $(STAMP)

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VENV_PYTHON) setup.cfg pyproject.toml
	$(VENV_PYTHON) -m pip install --upgrade pip $(PIP_ARGS)
	$(VENV_PYTHON) -m pip install "$(TORCH)" -e ".[dev]" $(PIP_ARGS)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV_PYTHON) train.py

test: $(STAMP)
	$(VENV_PYTHON) -m pytest -q $(PYTEST_ARGS)
