"""What the run's safeguards cost: the per-step check for non-finite values and signals (one
small collective) and the stall watchdog, on the built-in default run.

    mpiexec -n P python -m mpi4py benchmarks/bench_safeguards.py [--epochs 5] [--repeats 3]

Runs ``python -m ocnet.run``'s ``main`` in this process, alternating three variants per
repeat — both safeguards on (as shipped), the step check replaced by a no-op, the watchdog
off (``--stall-timeout 0``) — and reports each variant's median training time (the
summary's ``wall_time``) and its ratio to the shipped one.  Set ``OCNET_MALLOC=tuned`` to
raise glibc's allocator thresholds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import allocator, tune_malloc, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ocnet.ranks.comm import world  # noqa: E402
from ocnet.run import main  # noqa: E402
from ocnet.runs import train  # noqa: E402


class _NoCheck:
    """Stands in for the training loop's per-step check: nothing is sent, nothing found."""

    def __init__(self, comm, bad_field, signum, kept=0):
        self.kept = kept

    def result(self):
        return None, "", 0


def run(variant: str, out: Path, epochs: int, rank: int) -> float:
    real = train._Check
    if variant == "no step check":
        train._Check = _NoCheck  # type: ignore[misc,assignment]
    try:
        timeout = "0" if variant == "no watchdog" else "600"
        assert main(["--out", str(out), "--epochs", str(epochs), "--quiet", "--stall-timeout", timeout]) == 0
    finally:
        train._Check = real  # type: ignore[misc]
    return json.loads((out / "summary.json").read_text())["wall_time"] if rank == 0 else 0.0


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if allocator() == "tuned":
        tune_malloc()
    comm = world()
    variants = ("shipped", "no step check", "no watchdog")
    times: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = comm.bcast(tmp)  # rank 0's directory (its own is left empty)
        for r in range(args.repeats):
            for v in variants:
                times[v].append(run(v, Path(tmp) / f"{v.replace(' ', '-')}-{r}", args.epochs, comm.rank))
    if comm.rank == 0:
        median = {v: statistics.median(t) for v, t in times.items()}
        for v in variants:
            print(f"{v:>14}: median {median[v]:.3f} s, ratio to shipped {median[v] / median['shipped']:.3f}")
        write(f"safeguards_P{comm.size}", {"ranks": comm.size, "epochs": args.epochs, "allocator": allocator(),
                                           "times": times, "median": median}, args.out)


if __name__ == "__main__":
    cli()
