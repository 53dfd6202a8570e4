"""The transformer step's cost in ocnet against ``torch.nn.TransformerEncoderLayer``, and the
solvers' overhead on it.

    OCNET_MALLOC=tuned python benchmarks/bench_transformer.py [--repeats 7] [--out FILE.json]

The network: a vision transformer on CIFAR-shaped inputs (3×32×32, 4×4 patches: 64 tokens and a
class token), width 64, 4 heads, an MLP 4× wider, ``N`` layers, batch 32, synthetic data, one
thread, float32.  Times are medians of interleaved repeats in one process.

(a) forward + backward of ``N`` steps: ocnet's :class:`~ocnet.model.steps.AttentionStep` layers
    (``h = 1``) against ``N`` ``nn.TransformerEncoderLayer(norm_first=True, dropout=0,
    activation="gelu", batch_first=True)`` of the same size;
(b) one training step of the exported network in plain PyTorch against ocnet's solvers at
    P = 1: serial, MGRIT with one level (the exact sweep), MGRIT one-shot at two levels
    (c = 4, FCF, one iteration; two iterations) — their time / plain PyTorch and their step
    evaluations (forward and adjoint, counted by the solver).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import allocator, tune_malloc, write  # noqa: E402

from ocnet.model.grid import Partition  # noqa: E402
from ocnet.model.problem import build  # noqa: E402
from ocnet.model.steps import AttentionStep, Residual  # noqa: E402
from ocnet.perf.calibrate import median_interleaved  # noqa: E402
from ocnet.ranks.comm import SelfComm  # noqa: E402
from ocnet.solvers import get  # noqa: E402

SHAPE, WIDTH, HEADS, BATCH = (3, 32, 32), 64, 4, 32
TOKENS = 1 + (32 // 4) ** 2


def step_cost(layers: int, repeats: int) -> dict:
    """(a): ``layers`` steps forward and backward, ocnet against torch's encoder layer."""
    torch.manual_seed(0)
    ours = torch.nn.Sequential(*[Residual(AttentionStep(WIDTH, HEADS), 1.0) for _ in range(layers)])
    theirs = torch.nn.Sequential(*[torch.nn.TransformerEncoderLayer(
        WIDTH, HEADS, 4 * WIDTH, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        for _ in range(layers)])
    x = torch.randn(BATCH, TOKENS, WIDTH, requires_grad=True)

    def run(net):
        def fn():
            net.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
        return fn

    med = median_interleaved({"ocnet": run(ours), "torch": run(theirs)}, repeats)
    return {"layers": layers, "seconds": med, "ratio": med["ocnet"] / med["torch"]}


SOLVERS = {
    "serial": ("serial", {}),
    "mgrit 1 level": ("mgrit", dict(mgrit_levels=1, mgrit_mode="one_shot", mgrit_iters=1)),
    "mgrit 2 levels, 1 iteration": ("mgrit", dict(mgrit_levels=2, coarsening=4, mgrit_mode="one_shot",
                                                  mgrit_iters=1, mgrit_warm_start="none")),
    "mgrit 2 levels, 2 iterations": ("mgrit", dict(mgrit_levels=2, coarsening=4, mgrit_mode="one_shot",
                                                   mgrit_iters=2, mgrit_warm_start="none")),
}


def solver_overhead(layers: int, repeats: int) -> dict:
    """(b): one optimiser step of each solver (SGD with rate 0: every repeat sees the same
    parameters) against plain PyTorch on the exported network."""
    problem = build(SHAPE, 10, net="transformer", layers=layers, width=WIDTH, heads=HEADS, patch=4, seed=0)
    plain = problem.to_torch()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, *SHAPE, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)
    index = torch.arange(BATCH)

    def plain_step():
        plain.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(plain(x), y).backward()

    fns, evals = {"plain": plain_step}, {}
    for label, (name, options) in SOLVERS.items():
        solver = get(name)(problem.local(Partition(layers, 1), 0), SelfComm(),
                           lambda p: torch.optim.SGD(p, lr=0.0), **options)
        evals[label] = solver.step(x, y, index).get("step_evals", 2 * layers)  # serial: N forward, N backward
        fns[label] = lambda solver=solver: solver.step(x, y, index)
    med = median_interleaved(fns, repeats)
    return {"layers": layers, "seconds": med, "step_evals": evals,
            "ratio": {k: v / med["plain"] for k, v in med.items() if k != "plain"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if allocator() == "tuned":
        tune_malloc()
    torch.set_num_threads(1)
    a = step_cost(args.layers, args.repeats)
    print(f"(a) {args.layers} attention steps forward + backward (batch {BATCH}, {TOKENS} tokens, width {WIDTH}): "
          f"ocnet {a['seconds']['ocnet'] * 1e3:.1f} ms, torch TransformerEncoderLayer "
          f"{a['seconds']['torch'] * 1e3:.1f} ms, ratio {a['ratio']:.3f}")
    b = solver_overhead(args.layers, args.repeats)
    print(f"(b) one training step at P = 1, N = {args.layers}, against plain PyTorch "
          f"({b['seconds']['plain'] * 1e3:.1f} ms):")
    for label, ratio in b["ratio"].items():
        print(f"    {label:30s} {ratio:.3f}x   {b['step_evals'][label]} step evaluations")
    write("bench_transformer", {"allocator": allocator(), "threads": 1, "batch": BATCH, "tokens": TOKENS,
                                "width": WIDTH, "heads": HEADS, "step_cost": a, "solvers": b}, args.out)


if __name__ == "__main__":
    main()
