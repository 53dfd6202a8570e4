"""A contract test for solvers, for people who write their own.

    from ocnet.testing import check_solver
    check_solver(MySolver, my_option=3)

runs a small problem on one process and raises ``AssertionError`` with a clear message
when the solver breaks the contract of :class:`ocnet.solvers.Solver`: record fields,
learning (the loss falls), prediction shapes, a ``state_dict`` round trip that resumes
bit for bit, and — with ``exact=True`` — the same parameters as the serial solver.
"""
from __future__ import annotations

import io
import math
from typing import Any

import torch

from .comm import SelfComm
from .grid import Partition
from .problem import build
from .solvers.base import Solver
from .solvers.serial import Serial


def _toy(seed: int = 0, n: int = 64):
    """Two Gaussian blobs per class in 8 dimensions, 3 classes; float64."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.randn(3, 8, generator=gen, dtype=torch.float64) * 2
    x = centres[y] + 0.5 * torch.randn(n, 8, generator=gen, dtype=torch.float64)
    return x, y


def _make(cls: type[Solver], options: dict[str, Any], layers: int = 4):
    problem = build((8,), 3, net="dense", layers=layers, width=8, seed=1, dtype=torch.float64)
    network = problem.local(Partition(problem.n_layers, 1), 0)
    solver = cls(network, SelfComm(), lambda p: torch.optim.Adam(p, lr=1e-2), **options)
    return problem, solver


def _train(solver: Solver, x, y, steps: int, epoch: int = 0) -> list[dict[str, Any]]:
    solver.begin_epoch(epoch, x, y)
    records = []
    for s in range(steps):
        idx = torch.arange(len(y)).roll(-8 * s)[:32]
        records.append(solver.step(x[idx], y[idx], idx))
    return records


def check_solver(cls: type[Solver], *, exact: bool = False, rtol: float = 1e-10, **options: Any) -> None:
    """Check that ``cls`` honours the solver contract (see the module docstring)."""
    assert isinstance(cls.name, str) and cls.name, "a solver needs a non-empty `name`"
    for key, opt in cls.options.items():
        assert opt.convert(key, opt.default) == opt.default, f"option {key}: its default does not validate"
    x, y = _toy()

    # Records: numbers the training loop can sum; the last rank reports the loss.
    problem, solver = _make(cls, options)
    records = _train(solver, x, y, 30)
    for r in records:
        assert isinstance(r, dict), f"step() must return a dict, got {type(r).__name__}"
        assert "loss" in r and math.isfinite(r["loss"]), f"step() must report a finite 'loss', got {r}"
    first, last = records[0]["loss"], records[-1]["loss"]
    assert last < 0.7 * first, f"the loss did not fall on an easy problem: {first:.4g} -> {last:.4g}"

    logits = solver.predict(x)
    assert logits is not None and logits.shape == (len(y), 3), "predict() must give (batch, n_classes) logits"

    # state_dict round trip: a copy restored from the state continues identically.
    buf = io.BytesIO()
    torch.save(solver.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # checkpoints must load without running code
    twin_problem, twin = _make(cls, options)
    twin.load_state_dict(state)
    a, b = _train(solver, x, y, 3, epoch=1), _train(twin, x, y, 3, epoch=1)
    assert [r["loss"] for r in a] == [r["loss"] for r in b], "a solver restored from state_dict() diverges"
    for (k, p), q in zip(problem.named_parameters(), twin_problem.parameters()):
        assert torch.equal(p, q), f"parameter {k} differs after restoring from state_dict()"

    if exact:
        p1, mine = _make(cls, options)
        p2, serial = _make(Serial, {})
        _train(mine, x, y, 2)
        _train(serial, x, y, 2)
        for (k, p), q in zip(p1.named_parameters(), p2.parameters()):
            torch.testing.assert_close(p, q, rtol=rtol, atol=rtol * 1e-3,
                                       msg=f"{k}: not the serial solver's parameters")
