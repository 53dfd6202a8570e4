"""Shared pieces of the benchmarks: timing, the allocator setting, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds in this process, as ``--malloc tuned`` does in a
    run's ranks (:func:`ocnet.runs.allocator.tune`).  Returns whether it took effect."""
    from ocnet.runs.allocator import tune
    return tune()


def allocator() -> str:
    """The allocator setting of this benchmark and of the ``ocnet.run`` jobs it starts, in the
    benchmarks' words: ``"tuned"`` or ``"default"`` (glibc's own thresholds).  ``OCNET_MALLOC``
    where it is set; else ``"tuned"`` where ``GLIBC_TUNABLES`` is set (the benchmarks that set it
    set the tuned thresholds); else what ``--malloc auto`` means (:func:`ocnet.runs.allocator.setting`),
    so that a benchmark times what users run."""
    from ocnet.runs.allocator import ENV, setting
    if "GLIBC_TUNABLES" in os.environ and not os.environ.get(ENV, "").strip():
        return "tuned"
    return "tuned" if setting("auto") == "tuned" else "default"


def median_time(fn: Callable[[], None], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def write(name: str, result: dict, out: str | None = None) -> Path:
    result = {"benchmark": name, "machine": platform.machine(), "cores": os.cpu_count(),
              "torch": torch.__version__, **result}
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def mpiexec() -> str:
    """The mpiexec beside this Python (a venv's ``mpich`` wheel), else the one on PATH."""
    from ocnet.runs.launcher import mpiexec as found
    return found() or "mpiexec"


def under_mpiexec() -> bool:
    """Whether this process is a rank of an mpiexec job (MPICH's or Open MPI's environment)."""
    return os.environ.get("PMI_SIZE", "1") != "1" or os.environ.get("OMPI_COMM_WORLD_SIZE", "1") != "1"


def refuse_mpiexec(script: str) -> None:
    """Exit with a message when ``script``, which starts its own mpiexec jobs, runs under one."""
    if under_mpiexec():
        sys.exit(f"{script} starts its own mpiexec jobs: run it as `python benchmarks/{script}`")


def refuse_unknown(kind: str, names: list[str], known: dict, problems: list[str], known_problems: dict) -> None:
    """Exit naming the ``names`` of ``kind`` and the ``problems`` that are not among the known ones."""
    unknown = [n for n in names if n not in known] + [p for p in problems if p not in known_problems]
    if unknown:
        sys.exit(f"unknown {kind} or problem: {', '.join(unknown)} ({kind}s: {', '.join(known)}; "
                 f"problems: {', '.join(known_problems)})")
