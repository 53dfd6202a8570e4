"""Torch threads per rank: a training step's time with 1, 2, … threads, for the choice that
``--threads 0`` makes when ``OMP_NUM_THREADS`` is not set.

    OCNET_MALLOC=tuned python benchmarks/bench_threads.py [--repeats 15] [--out FILE.json]

One process (P = 1; with P ranks on a node each rank gets the cores ÷ P, so the question
is the same with fewer cores).  Cases, each an Adam step (forward, backward, update) of
the exported network, medians of interleaved repeats:

* ``digits``: the default run's network (dense, 16 layers, width 32, batch 64, 64 inputs);
* ``digits-conv``: ``--net conv`` on the 8×8 digits (16 layers, 8 channels, batch 64);
* ``cifar-conv``: CIFAR shapes (8 conv layers, 16 channels, 32×32, batch 128).

The figure is each thread count's time relative to one thread (below 1: faster).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import allocator, tune_malloc, write  # noqa: E402

from ocnet.model.problem import build  # noqa: E402


def cases() -> dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=gen)

    return {
        "digits": (build((64,), 10, net="dense", layers=16, width=32, seed=0).to_torch(),
                   torch.randn(64, 64, generator=gen), labels(64)),
        "digits-conv": (build((1, 8, 8), 10, net="conv", layers=16, channels=[8], seed=0).to_torch(),
                        torch.randn(64, 1, 8, 8, generator=gen), labels(64)),
        "cifar-conv": (build((3, 32, 32), 10, net="conv", layers=8, channels=[16], seed=0).to_torch(),
                       torch.randn(128, 3, 32, 32, generator=gen), labels(128)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out")
    args = ap.parse_args()
    tuned = tune_malloc() if allocator() == "tuned" else False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    counts = sorted({1, 2, cores} & set(range(1, cores + 1)))
    result: dict = {"allocator": allocator(), "malloc_tuned": tuned, "cores": cores, "cases": {}}
    for name, (model, x, y) in cases().items():
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        times: dict[int, list[float]] = {t: [] for t in counts}
        for r in range(args.repeats + 1):  # interleaved; the first round warms up
            for t in counts:
                torch.set_num_threads(t)
                start = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                if r:
                    times[t].append(time.perf_counter() - start)
        med = {t: statistics.median(v) for t, v in times.items()}
        result["cases"][name] = {"median_s": med, "relative": {t: med[t] / med[1] for t in counts}}
        print(f"{name}: " + ", ".join(f"{t} thread{'s' * (t > 1)} {med[t] * 1e3:.2f} ms ({med[t] / med[1]:.2f}x)"
                                      for t in counts))
    write("bench_threads", result, args.out)


if __name__ == "__main__":
    main()
