"""Digits accuracy of serial, hybrid, penalty and al on P ranks, in one job.

argv: out.json run_root

Each run goes through ``ocnet.run.main`` (the ``python -m ocnet.run`` entry point) in this
process, which saves three interpreter start-ups per solver; rank 0 collects the
summaries.  The settings are the test's contract (tests/test_penalty_mpi.py).

Guards against an accuracy that the upstream blocks have no part in (``--reinit-every 1``
trains only the last block, on frozen random features: 92.2 %): for penalty and al the
summary gains ``upstream_change`` (relative change ‖θ − θ_init‖/‖θ_init‖ of the blocks
before the last) and ``upstream_reset_acc`` (test accuracy with those blocks put back to
their initial values and the trained last block kept).
"""
import json
import sys
from pathlib import Path

import torch

from ocnet import run
from ocnet.model.grid import Partition
from ocnet.runs import job

out, root = sys.argv[1], Path(sys.argv[2])
COMMON = ["--quiet", "--threads", "1", "--seed", "0", "--plots", "none"]  # figures: python -m ocnet.plot runs/*
# The convolutional net on the 8×8 images, three stages (8×8×8 → 16×4×4 → 32×2×2; a one-stage
# net with global average pooling trains slowly even serially: 61 % after 10 epochs at 8
# channels).  Same epochs for every solver; measurements in docs/layer_parallel.rst.
CONV = ["--net", "conv", "--channels", "8,16,32", "--layers", "9", "--lr", "0.01", "--epochs", "12",
        "--schedule", "cosine"]
RUNS = {
    "serial": CONV,
    # ρ restarts after every serial correction, so with 1 : 1 the parallel epochs run at ρ = 1
    "hybrid": CONV + ["--parallel-epochs", "1", "--serial-epochs", "1"],
    "penalty": CONV,  # the defaults: ρ = 1·3^epoch (≤ 1e4), aux_lr 0.5
    "al": CONV,  # and mu_step 0.01
}
comm = job.comm_mod.world()
summaries = {}
for name, args in RUNS.items():
    solver = name.split("_")[0]
    code = run.main(["--solver", solver, "--out", str(root / name), *COMMON, *args])
    assert code == 0, f"{name}: exit {code}"
    if comm.rank == 0:  # rank 0 writes the summary before main returns
        summaries[name] = json.loads((root / name / "summary.json").read_text())

# the initial network (same seed), built on every rank (setup is collective)
s = job.setup(["--out", str(root / "init"), *COMMON, *CONV], comm)
if comm.rank == 0:
    problem, data = s["problem"], s["data"].to("cpu", getattr(torch, s["config"]["dtype"]))
    init = {k: v.clone() for k, v in problem.state_dict().items()}
    part = Partition(problem.n_layers, comm.size)  # one block per rank
    last_start = part.bounds(comm.size - 1)[0]

    def upstream(key):
        return key.startswith("opening") or (key.startswith("layers.") and int(key.split(".")[1]) < last_start)

    def accuracy(state):
        problem.load_state_dict(state)
        with torch.no_grad():
            return float((problem(data.x_test).argmax(1) == data.y_test).float().mean())

    for name in ("penalty", "al"):
        trained = torch.load(root / name / "model.pt")
        keys = [k for k in trained if upstream(k) and init[k].dtype.is_floating_point]
        change = sum(float(((trained[k] - init[k]) ** 2).sum()) for k in keys)
        norm = sum(float((init[k] ** 2).sum()) for k in keys)
        summaries[name]["upstream_change"] = (change / norm) ** 0.5
        summaries[name]["upstream_reset_acc"] = accuracy({**trained, **{k: init[k] for k in keys}})
    Path(out).write_text(json.dumps(summaries))
