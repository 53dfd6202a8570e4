"""Digits accuracy of serial, hybrid, penalty and al on P ranks, in one job.

argv: out.json run_root

Each run goes through ``ocnet.run.main`` (the ``python -m ocnet.run`` entry point) in this
process, which saves three interpreter start-ups per solver; rank 0 collects the
summaries.  The settings are the test's contract (tests/test_penalty_mpi.py).
"""
import json
import sys
from pathlib import Path

from ocnet import run

out, root = sys.argv[1], Path(sys.argv[2])
COMMON = ["--quiet", "--threads", "1", "--seed", "0"]
# The convolutional net on the 8×8 images, three stages (8×8×8 → 16×4×4 → 32×2×2; a one-stage
# net with global average pooling trains slowly even serially: 61 % after 10 epochs at 8
# channels).  Same epochs for every solver; measurements in docs/layer_parallel.rst.
CONV = ["--net", "conv", "--channels", "8,16,32", "--layers", "9", "--lr", "0.01", "--epochs", "12",
        "--schedule", "cosine"]
RUNS = {
    "serial": CONV,
    "hybrid": CONV + ["--parallel-epochs", "1", "--serial-epochs", "1"],
    "penalty": CONV + ["--rho", "1", "--aux-lr", "0.5"],
    "al": CONV + ["--rho", "1", "--aux-lr", "0.5", "--mu-step", "0.01"],
}
rank = run.comm_mod.world().rank
summaries = {}
for name, args in RUNS.items():
    solver = name.split("_")[0]
    code = run.main(["--solver", solver, "--out", str(root / name), *COMMON, *args])
    assert code == 0, f"{name}: exit {code}"
    if rank == 0:  # rank 0 writes the summary before main returns
        summaries[name] = json.loads((root / name / "summary.json").read_text())
if rank == 0:
    Path(out).write_text(json.dumps(summaries))
