# comsl_fairseq: install into .venv, run the tests, run the demo.
#
# Install order matters (see README "Install"):
#   1. torch first. TORCH_SPEC defaults to the CPU build; a torch the base interpreter
#      already has is reused (the venv then sees system site-packages) and not replaced.
#   2. the fairseq fork and openai-whisper with --no-deps: fairseq declares torchaudio,
#      which pins a torch of its own; whisper declares triton, only used for GPU timing.
#   3. their real runtime needs (requirements.txt), test tools, then this package.
# System packages (SYSTEM_PACKAGES, Debian names) are installed with apt-get when their
# command is missing: as root directly, otherwise through sudo; without either, make stops
# and names the package. .ci/run installs nothing itself: it only calls `make test`.

VENV        ?= .venv
PY          := $(VENV)/bin/python
TORCH_SPEC  ?= torch==2.13.0
FAIRSEQ_SPEC ?= ve-fairseq==0.12.3
WHISPER_SPEC ?= openai-whisper==20250625
PYTEST_ARGS ?=
# Debian package:command pairs. espeak-ng synthesizes the toy corpus (demo and its tests).
SYSTEM_PACKAGES ?= espeak-ng:espeak-ng

.PHONY: install system-packages test test-quick test-all demo demo-both-ways ablation trim-vocab-ab lint clean

install: system-packages $(VENV)/.installed

system-packages:
	@missing=""; for pc in $(SYSTEM_PACKAGES); do \
	  command -v "$${pc#*:}" >/dev/null 2>&1 || missing="$$missing $${pc%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; \
	  else echo "error: missing system packages:$$missing. Install them (Debian/Ubuntu: apt-get install$$missing) and re-run make." >&2; exit 1; fi; \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "error: missing system packages:$$missing (Debian names) and no apt-get here: install them with your package manager and re-run make." >&2; exit 1; fi; \
	  echo "installing system packages:$$missing (apt-get)"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends$$missing >/dev/null; \
	fi

$(VENV)/.installed: setup.py requirements.txt requirements-dev.txt Makefile
	@if python3 -c "import torch" 2>/dev/null; then \
	  echo "using the torch of $$(command -v python3)"; python3 -m venv --system-site-packages $(VENV); \
	else python3 -m venv $(VENV); fi
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "torch $$($(PY) -c 'import torch; print(torch.__version__)') already installed: kept"; \
	else $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q --no-deps "$(FAIRSEQ_SPEC)" "$(WHISPER_SPEC)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation -e .
	$(PY) -c "import torch, fairseq, whisper, comsl_fairseq; print('installed: torch', torch.__version__, '| fairseq', fairseq.__version__)"
	touch $@

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

test-quick: install
	$(PY) -m pytest -q -m "not slow and not subprocess" $(PYTEST_ARGS) tests

test-all: install
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS) tests

demo: install
	PY=$(PY) bash examples/toy/run_demo.sh

# one model trained on both directions of the toy corpus (fr/de/es <-> English number words)
demo-both-ways: install
	PY=$(PY) bash examples/toy/run_both_ways.sh

ablation: install
	PY=$(PY) bash examples/toy/run_ablation.sh

# the demo's pipeline twice on a toy with a multilingual dictionary: the full vocabulary against a trimmed one
trim-vocab-ab: install
	PY=$(PY) bash examples/toy/run_trim_vocab.sh

# ruff, then the import rules of .importlinter (which folder may import which)
lint: install
	$(VENV)/bin/ruff check comsl_fairseq tests scripts examples
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
