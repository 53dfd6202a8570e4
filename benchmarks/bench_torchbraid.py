"""ocnet's MGRIT training step against torchbraid's on the same network and settings.

    OCNET_MALLOC=tuned python benchmarks/bench_torchbraid.py [--repeats 7]
    OCNET_MALLOC=tuned mpiexec -n 2 python -m mpi4py benchmarks/bench_torchbraid.py

torchbraid is not a dependency of ocnet and not on PyPI; build it from its repository, with
XBraid in ``src/xbraid`` and the MPI that ocnet runs on (the venv's ``mpicc`` first on PATH)::

    pip install cython numpy mpi4py setuptools
    git clone https://github.com/Multilevel-NN/torchbraid && cd torchbraid
    git clone https://github.com/XBraid/xbraid src/xbraid
    pip install --no-build-isolation .

With MPICH, delete the line ``#include "mpi-ext.h"`` from
``src/torchbraid/test_fixtures/gpumpi_check.h`` first: that header is Open MPI's.

The network is ``bench_mgrit_lean.py``'s: ``build((3, 32, 32), 10, net="conv", layers=N,
channels=[16], T=2)``, batch 32, synthetic data, one thread per rank, N = 32 and 64.
torchbraid's step block is each ocnet layer's ``F`` with that layer's parameters (torchbraid
takes ``u + dt F(u)``), between the same opening and classifier on rank 0.  Both run
torchbraid's settings: 3 levels, c = 4, skip the first down-cycle, F-relaxation on the fine
level and FCF on the coarse ones, ``max_iters = 2`` (ocnet: ``mgrit_iters = 1`` with
``mgrit_skip``) and the final FC-relaxation, forward and adjoint.  Timed side by side, their
repeats interleaved (the order turning round every repeat), medians over ``--repeats``, each
against plain PyTorch (the exported network's forward and backward; on rank 0 while the
other ranks wait): ocnet's step is one optimiser step of the ``mgrit`` solver (SGD, rate 0),
torchbraid's a forward and backward.  On one rank also: the layer forwards of one step (the
residual layers' convolutions) and each gradient's relative error against plain's.
Figures go to stdout and to benchmarks/results/bench_torchbraid[_pP].json (or --out).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mgrit_lean import BATCH, TORCHBRAID, batch, make_solver, problem  # noqa: E402
from common import allocator, tune_malloc, write  # noqa: E402

from ocnet.ranks.comm import world  # noqa: E402


class Block(torch.nn.Module):
    """An ocnet layer's ``F`` as torchbraid's step block."""

    def __init__(self, F: torch.nn.Module) -> None:
        super().__init__()
        self.F = F

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.F(u)


def layer_parallel(torchbraid, mpi_comm, N: int):
    """torchbraid's LayerParallel on ``problem(N)``'s layers, at torchbraid's settings."""
    ref = problem(N)
    lp = torchbraid.LayerParallel(mpi_comm, lambda: Block(copy.deepcopy(ref.layers[0].F)), N, 2.0,
                                  max_fwd_levels=3, max_bwd_levels=3, max_iters=2)
    lp.setPrintLevel(0, True)
    lp.setPrintLevel(0, False)
    lp.setCFactor(4)
    lp.setSkipDowncycle(True)
    lp.setNumRelax(1)  # FCF on the coarse levels
    lp.setNumRelax(0, level=0)  # F on the fine one
    lp.setFwdMaxIters(2)
    lp.setBwdMaxIters(2)
    lp.setFwdFinalFCRelax()
    lp.setBwdFinalFCRelax()
    for i, block in lp.fwd_app.layer_dict.items():  # this rank's layers, by global index
        (step,) = [m for m in block.modules() if isinstance(m, Block)]
        step.F.load_state_dict(ref.layers[i].F.state_dict())
    return ref, lp


def convolutions(modules) -> dict:
    """A counter of the forward calls of the convolutions in ``modules``."""
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1
    for module in modules:
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_hook(count)
    return calls


def compare(torchbraid, mpi_comm, N: int, repeats: int) -> dict:
    comm = world()
    rank = comm.rank
    _, network, solver = make_solver(comm, N, **TORCHBRAID, mgrit_storage="graph")
    plain = problem(N).to_torch()
    ref, lp = layer_parallel(torchbraid, mpi_comm, N)
    compose = lp.comp_op()  # runs the opening and the classifier on rank 0 only
    x, y = batch()
    idx = torch.arange(BATCH)

    def plain_step():
        if rank == 0:
            plain.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(plain(x), y).backward()

    def torchbraid_step():
        for m in (lp, ref.opening, ref.classifier):
            m.zero_grad()  # torchbraid's takes no set_to_none
        logits = compose(ref.classifier, lp(compose(ref.opening, x)))
        compose(torch.nn.functional.cross_entropy, logits, y).backward()

    steps = {"plain": plain_step, "ocnet": lambda: solver.step(x, y, idx), "torchbraid": torchbraid_step}
    times: dict = {k: [] for k in steps}
    for r in range(repeats + 1):
        for name, step in (list(steps.items()) if r % 2 else list(steps.items())[::-1]):
            comm.barrier()
            t = time.perf_counter()
            step()
            comm.barrier()
            if r > 0:
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"N": N, "step_s": med, "ocnet_vs_plain": med["ocnet"] / med["plain"],
           "torchbraid_vs_plain": med["torchbraid"] / med["plain"],
           "ocnet_vs_torchbraid": med["ocnet"] / med["torchbraid"]}
    if comm.size == 1:
        layers = {"plain": list(plain)[1:-1], "ocnet": list(network.layers), "torchbraid": [lp]}
        forwards = {}
        for name, mods in layers.items():
            calls = convolutions(mods)
            steps[name]()
            forwards[name] = calls["n"]
        grads = {name: torch.cat([p.grad.flatten() for m in mods for p in m.parameters()])
                 for name, mods in layers.items()}
        out["layer_forwards"] = forwards
        out["gradient_error"] = {k: float((grads[k] - grads["plain"]).norm() / grads["plain"].norm())
                                 for k in ("ocnet", "torchbraid")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out")
    args = ap.parse_args()
    try:
        import torchbraid
        from mpi4py import MPI
    except ImportError as e:
        sys.exit(f"bench_torchbraid: torchbraid is not installed ({e}); the module docstring says how to build it")
    if allocator() == "tuned":
        tune_malloc()
    torch.set_num_threads(1)
    rows = []
    for N in (32, 64):
        row = compare(torchbraid, MPI.COMM_WORLD, N, args.repeats)
        rows.append(row)
        if MPI.COMM_WORLD.Get_rank() == 0:
            extra = ""
            if "layer_forwards" in row:
                f, e = row["layer_forwards"], row["gradient_error"]
                extra = (f"; layer forwards plain {f['plain']}, ocnet {f['ocnet']}, torchbraid {f['torchbraid']}; "
                         f"gradient error ocnet {e['ocnet'] * 100:.2f} %, torchbraid {e['torchbraid'] * 100:.2f} %")
            print(f"P={MPI.COMM_WORLD.Get_size()} N={N}: plain {row['step_s']['plain'] * 1e3:.0f} ms; ocnet "
                  f"{row['ocnet_vs_plain']:.3f}x plain, torchbraid {row['torchbraid_vs_plain']:.3f}x plain: "
                  f"ocnet takes {row['ocnet_vs_torchbraid']:.3f}x torchbraid's time{extra}", flush=True)
    if MPI.COMM_WORLD.Get_rank() == 0:
        size = MPI.COMM_WORLD.Get_size()
        write("bench_torchbraid" + ("" if size == 1 else f"_p{size}"),
              {"ranks": size, "allocator": allocator(), "batch": BATCH, "settings": TORCHBRAID,
               "torchbraid": getattr(torchbraid, "__version__", "unknown"), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
