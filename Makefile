# comsl_fairseq: install into .venv, run the tests, run the demo.
#
# Install order matters (see ../shared/FAIRSEQ-NOTES.md and README "Install"):
#   1. torch first. TORCH_SPEC defaults to the CPU build; a torch the base interpreter
#      already has is reused (the venv then sees system site-packages) and not replaced.
#   2. the fairseq fork and openai-whisper with --no-deps: fairseq declares torchaudio,
#      which pins a torch of its own; whisper declares triton, only used for GPU timing.
#   3. their real runtime needs (requirements.txt), test tools, then this package.

VENV        ?= .venv
PY          := $(VENV)/bin/python
TORCH_SPEC  ?= torch==2.13.0
FAIRSEQ_SPEC ?= ve-fairseq==0.12.3
WHISPER_SPEC ?= openai-whisper==20250625
PYTEST_ARGS ?=

.PHONY: install test test-all demo lint clean

install: $(VENV)/.installed

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

.PHONY: test-quick
test-quick: install
	$(PY) -m pytest -q -m "not slow and not subprocess" $(PYTEST_ARGS) tests

test-all: install
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS) tests

demo: install
	PY=$(PY) bash scripts/run_demo.sh

lint: install
	$(VENV)/bin/ruff check comsl_fairseq tests scripts examples

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
