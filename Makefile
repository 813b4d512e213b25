# Two commands do all set-up on a fresh machine: `make test` and `make accuracy`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# CPU machines get the CPU build of torch (a bare `torch` requirement would pull a multi-GB CUDA build);
# on a GPU machine install your own CUDA torch first, or set TORCH_SPEC.
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)

.PHONY: venv test test-gpu clean help

help:
	@echo "make test      create $(VENV) if missing, install the project, run the test suite"
	@echo "make test-gpu  run only the GPU-marked tests"

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -c constraints.txt -e ".[test,demo,serve]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

clean:
	rm -rf $(VENV) .pytest_cache
