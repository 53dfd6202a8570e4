# `make run` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
NP ?= 8
# The CPU build of torch (a bare `torch` can pull a multi-GB CUDA build).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup run lint test test-fast check-configs check-gpu check-scaling bench docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)" mpich
	$(BIN)/pip install -q -e ".[test,convex]"
	touch $@

run: setup
	$(BIN)/mpirun -n $(NP) $(BIN)/python -m ocnet.run

# The venv's mpiexec first on PATH: MPI tests launch it.
PYTEST := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -p no:cacheprovider
# Two pytest workers: MPI tests spend much of their time starting ranks and waiting.
WORKERS ?= 2

# Lint, types and the order of the parts (seconds).
lint: setup
	$(BIN)/ruff check ocnet tests benchmarks docs/figures.py
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Lint, then the whole suite but the configuration reproductions (make check-configs).
test: lint
	$(PYTEST) -n $(WORKERS) --dist worksteal -m "not configs" --durations=30 tests

# After each change: everything but the tests that launch ranks, the site build and the reproductions.
test-fast: setup
	$(PYTEST) -n $(WORKERS) --dist worksteal -m "not mpi and not docs and not configs" tests

# The shipped configurations trained to the accuracy each promises (minutes each).
check-configs: setup
	@start=$$(date +%s); $(PYTEST) -m configs tests; status=$$?; \
	echo "check-configs: $$(( $$(date +%s) - start )) s"; exit $$status

# On a machine with CUDA: the device tests, the default run and solver timings on the GPU.
check-gpu: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/check_gpu.py

# Meant for a machine with 16 cores (one per rank, as a GPU machine has; make check-gpu runs it too):
# every solver at P = 1, 2, 4, 8, 16 against the performance model's prediction (minutes).
SCALING_RANKS ?= 1,2,4,8,16
check-scaling: setup
	OCNET_MALLOC=tuned $(BIN)/python benchmarks/bench_scaling.py --ranks $(SCALING_RANKS)

# The documentation site in docs/_build/html (its figures drawn by short runs of ocnet).
docs: setup
	$(BIN)/python docs/figures.py
	$(BIN)/python -m sphinx -b html -W --keep-going -q docs docs/_build/html

# Each benchmark prints its figures and writes JSON to benchmarks/results/.
# Not here: bench_torchbraid.py, which needs torchbraid built (its docstring says how).
bench: setup
	$(BIN)/python benchmarks/bench_serial.py
	$(BIN)/mpiexec -n 2 $(BIN)/python -m mpi4py benchmarks/bench_v_split.py
	$(BIN)/python benchmarks/bench_mgrit.py
	$(BIN)/mpiexec -n 2 $(BIN)/python -m mpi4py benchmarks/bench_mgrit.py
	$(BIN)/mpiexec -n 2 $(BIN)/python -m mpi4py benchmarks/bench_layer_parallel.py
	$(BIN)/mpiexec -n 2 $(BIN)/python -m mpi4py benchmarks/bench_safeguards.py
	$(BIN)/mpiexec -n 2 $(BIN)/python -m mpi4py benchmarks/bench_watchdog.py
	$(BIN)/python benchmarks/bench_mgrit_lean.py
	$(BIN)/mpiexec -n 2 $(BIN)/python -m mpi4py benchmarks/bench_mgrit_lean.py --part b
	$(BIN)/python benchmarks/bench_timeline.py
	$(BIN)/python benchmarks/bench_scaling.py
	$(BIN)/python benchmarks/bench_threads.py
	$(BIN)/python benchmarks/bench_transformer.py
	$(BIN)/python benchmarks/bench_accuracy_control.py
	$(BIN)/python benchmarks/bench_defaults.py
	$(BIN)/mpiexec -n 2 $(BIN)/python -m mpi4py benchmarks/bench_grid.py

clean:
	rm -rf $(VENV) build *.egg-info docs/_build docs/_figures
