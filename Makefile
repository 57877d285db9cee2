# Set-up and entry points. Every target builds the virtual environment first when it is missing.
#
# torch: a torch already importable in the venv is kept (CUDA or CPU, whatever it is); otherwise
# torch==$(TORCH_VERSION) is installed from where pip looks by default, or from TORCH_INDEX when given.
# Beware: from the plain package index (PyPI) on Linux x86-64 that is the CUDA build, about 5 GB with its
# nvidia-* packages. For a CPU-only torch:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu     (PyTorch's CPU wheels, about 200 MB)
#   make setup VENV_ARGS=--system-site-packages                      (use a torch installed outside the venv)
# or install a torch into .venv/ yourself before `make setup`. (The machines this project is developed on have
# the CPU wheel in pip's local wheel folder, so plain `make setup` gets it there.)
PYTHON ?= python3
VENV ?= .venv
VENV_ARGS ?=
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
TORCH_FROM := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: setup demo test lint benchmark clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==$(TORCH_VERSION) $(TORCH_FROM)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/iclab demo

test: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

benchmark: setup
	$(BIN)/python benchmarks/run.py

# Everything set-up, the tests and the tools leave behind: the venv, run dirs, the caches of pytest,
# Hypothesis and ruff, Python's bytecode and the editable install's metadata.
clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
