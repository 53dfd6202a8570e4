"""A run's life: the configuration (options, TOML, command line), the job that builds
everything from it and trains, the run directory and the claim that keeps it one job's,
Ctrl-C while a job starts, the training loop, checkpoints, the console, fault injection, the
memory estimate a run checks before it starts, and the contract test of a solver
(:func:`check_solver`).

May use: :mod:`ocnet.solvers`, :mod:`ocnet.mgrit`, :mod:`ocnet.ranks`, :mod:`ocnet.model`.
"""
