# `make run` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
NP ?= 8
# The CPU build of torch (a bare `torch` can pull a multi-GB CUDA build).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)" mpich
	$(BIN)/pip install -q -e ".[test]"
	touch $@

run: setup
	$(BIN)/mpirun -n $(NP) $(BIN)/python -m ocnet.run

test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q tests

bench: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_serial.py

clean:
	rm -rf $(VENV) build *.egg-info
