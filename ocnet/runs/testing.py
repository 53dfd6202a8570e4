"""Contract tests for solvers and step kinds, for people who write their own.

    from ocnet import check_solver
    check_solver(MySolver, my_option=3)                 # one process
    check_solver(MySolver, my_option=3, ranks=(2, 3))   # and under mpiexec on 2 and 3 ranks

runs a small problem and raises ``AssertionError`` with a clear message when the solver
breaks the contract of :class:`ocnet.solvers.Solver`:

* on one process: record fields that are declared and combine, learning (the loss falls),
  prediction shapes, a ``state_dict`` round trip that resumes bit for bit, two runs from one
  seed that agree, and — with ``exact=True`` — the serial solver's parameters;
* on each rank count of ``ranks`` (under ``mpiexec``, with a timeout, so a deadlock fails
  instead of hanging): records that combine over the ranks, a ``state_dict`` round trip on
  every rank that resumes bit for bit, two runs from one seed that agree, and — when the
  solver claims ``rank_invariant`` — the losses and parameters of one process.

:func:`check_step` checks a step kind of one's own (``--net NAME``) likewise.

``python -m mpi4py -m ocnet.runs.testing SPEC OPTIONS OUT`` is the ranks' side (internal).
"""
from __future__ import annotations

import importlib
import inspect
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from ..model.problem import Problem, build
from ..model.steps import Residual
from ..ranks.comm import Comm, SelfComm
from ..solvers.base import Solver
from ..solvers.records import Record, combine
from ..solvers.serial import Serial
from .launcher import launch


def _toy(seed: int = 0, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs per class in 8 dimensions, 3 classes; float64."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.randn(3, 8, generator=gen, dtype=torch.float64) * 2
    x = centres[y] + 0.5 * torch.randn(n, 8, generator=gen, dtype=torch.float64)
    return x, y


def _make(cls: type[Solver], options: dict[str, Any], layers: int = 4,
          comm: Comm | None = None) -> tuple[Problem, Solver]:
    comm = comm if comm is not None else SelfComm()
    problem = build((8,), 3, net="dense", layers=layers, width=8, seed=1, dtype=torch.float64)
    config = {k: options.get(k, o.default) for k, o in cls.options_for(options).items()}
    partition = cls.partition(problem.n_layers, comm.size, config)
    network = problem.local(partition, comm.rank)
    solver = cls(network, comm, lambda p: torch.optim.Adam(p, lr=1e-2), seed=0, **options)
    return problem, solver


def _train(solver: Solver, x: torch.Tensor, y: torch.Tensor, steps: int, epoch: int = 0) -> list[Record]:
    records = [solver.begin_epoch(epoch, x, y)]
    for s in range(steps):
        idx = torch.arange(len(y)).roll(-8 * s)[:32]
        records.append(solver.step(x[idx], y[idx], idx))
    records.append(solver.end_epoch(epoch))
    return records


def _losses(records: list[Record]) -> list[Any]:
    return [r.get("loss") for r in records[1:-1]]


def _check_fields(solver: Solver, records: list[Record]) -> None:
    fields = solver.record_fields()
    for r in records:
        assert isinstance(r, dict), f"step() and the hooks must return a dict, got {type(r).__name__}"
        for key in r:
            assert key in fields, (f"record field {key!r} is not declared: add it to {type(solver).__name__}"
                                   f".fields with its combine rule (ocnet.solvers.records.Field)")
    combine(records, fields)


def _state_bytes(solver: Solver) -> bytes:
    buf = io.BytesIO()
    torch.save(solver.state_dict(), buf)
    return buf.getvalue()


def _restored(cls: type[Solver], options: dict[str, Any], state: bytes, layers: int,
              comm: Comm | None = None) -> tuple[Problem, Solver]:
    problem, twin = _make(cls, options, layers, comm)
    # checkpoints must load without running code
    twin.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
    return problem, twin


def _same_parameters(a: Problem, b: Problem) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def check_solver(cls: type[Solver], *, exact: bool = False, rtol: float = 1e-10,
                 ranks: Sequence[int] = (), layers: int = 6, timeout: float = 120, **options: Any) -> None:
    """Check that ``cls`` honours the solver contract (see the module docstring).

    Parameters
    ----------
    exact : bool
        Also demand the serial solver's parameters after two steps (one process).
    rtol : float
        Relative tolerance of the comparisons with the serial solver and across rank counts.
    ranks : sequence of int
        Rank counts to run the solver on under ``mpiexec`` (the class must be importable:
        defined at the top level of a module or of a ``.py`` file).
    layers : int
        Residual layers of the network of the multi-rank checks.
    timeout : float
        Seconds one multi-rank run may take before it counts as a hang.
    **options
        The solver's options.
    """
    assert isinstance(cls.name, str) and cls.name, "a solver needs a non-empty `name`"
    for key, opt in cls.options.items():
        assert opt.convert(key, opt.default) == opt.default, f"option {key}: its default does not validate"
    x, y = _toy()

    # Records: declared fields that combine; the loss is reported and falls.
    problem, solver = _make(cls, options)
    records = _train(solver, x, y, 30)
    _check_fields(solver, records)
    losses = _losses(records)
    for loss in losses:
        assert loss is not None and math.isfinite(loss), f"step() must report a finite 'loss', got {loss}"
    assert losses[-1] < 0.7 * losses[0], \
        f"the loss did not fall on an easy problem: {losses[0]:.4g} -> {losses[-1]:.4g}"

    logits = solver.predict(x)
    assert logits is not None and logits.shape == (len(y), 3), "predict() must give (batch, n_classes) logits"

    # state_dict round trip: a copy restored from the state continues identically.
    twin_problem, twin = _restored(cls, options, _state_bytes(solver), 4)
    a, b = _train(solver, x, y, 3, epoch=1), _train(twin, x, y, 3, epoch=1)
    assert _losses(a) == _losses(b), "a solver restored from state_dict() diverges"
    for (k, p), q in zip(problem.named_parameters(), twin_problem.parameters()):
        assert torch.equal(p, q), f"parameter {k} differs after restoring from state_dict()"

    # One seed, one result.
    again_problem, again = _make(cls, options)
    assert _losses(_train(again, x, y, 30)) == losses, "two runs from one seed differ"
    _train(again, x, y, 3, epoch=1)
    assert _same_parameters(problem, again_problem), "two runs from one seed end with different parameters"

    if exact:
        p1, mine = _make(cls, options)
        p2, serial = _make(Serial, {})
        _train(mine, x, y, 2)
        _train(serial, x, y, 2)
        for (k, p), q in zip(p1.named_parameters(), p2.parameters()):
            torch.testing.assert_close(p, q, rtol=rtol, atol=rtol * 1e-3,
                                       msg=f"{k}: not the serial solver's parameters")

    if ranks:
        reference = _ranks_side(cls, options, layers, SelfComm())
        for n in ranks:
            _check_on_ranks(cls, options, layers, n, reference, rtol, timeout)


def check_step(net: str, input_shape: Sequence[int] = (8,), n_classes: int = 3, batch: int = 6,
               **settings: Any) -> None:
    """Check that the step kind ``net`` (:func:`ocnet.model.kinds.register_step`) gives what
    every solver relies on, on ``batch`` random samples of ``input_shape``; raises
    ``AssertionError`` naming the property that fails:

    * the network builds, in float32 and in float64, and its logits are
      ``(batch, n_classes)``, finite, in the network's dtype;
    * ``F`` keeps the state's shape and dtype (``u + h F(u)`` is a step of one state space);
    * ``F`` is deterministic: twice the same input, bit for bit the same output (in training
      and in evaluation mode);
    * ``F`` does not couple the samples of a batch, unless the kind declares
      ``couples_samples``: each sample alone gives what it gives in the batch (micro-batches,
      pipelines and the penalty methods' per-sample states depend on it);
    * every parameter of ``F`` gets a finite gradient.

    With several stages (a kind with a transition and several ``channels``) every stage's
    ``F`` is checked so, and every transition too (but for the shape, which it may change).
    ``settings`` are :func:`~ocnet.model.problem.build`'s (``width``, ``channels``, …).
    """
    from ..model import kinds

    # the built-in kinds couple samples with batch norm only
    couples = kinds.get(net).couples_samples if net not in kinds.BUILT_IN else settings.get("norm") == "batch"
    name = f"check_step({net!r})"
    layers = max(2, len(settings.get("channels", ())))  # a step in every stage
    nets = {}
    for dtype in (torch.float32, torch.float64):
        try:
            nets[dtype] = build(tuple(input_shape), n_classes, net=net, layers=layers, seed=0, dtype=dtype,
                                **settings)
        except Exception as e:
            raise AssertionError(f"{name}: the network does not build in {dtype}: {type(e).__name__}: {e}") from e
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=gen, dtype=torch.float64)
    problem = nets[torch.float64]
    with torch.no_grad():
        u = problem.opening(x)
    checked: list[tuple[str, torch.nn.Module, torch.Tensor]] = []  # every stage's first F, every transition
    stage, first = 0, True
    for layer in problem.layers:
        what, F = None, layer
        if not isinstance(layer, Residual):
            stage, first = stage + 1, True
            what = f"the transition into stage {stage}"
        elif first:
            first, what, F = False, "F" if stage == 0 else f"F of stage {stage}", layer.F
        if what is not None:
            _check_map(f"{name}: {what}", F, u, batch, couples, keeps_shape=F is not layer)
            checked.append((what, F, u))
        with torch.no_grad():
            u = layer(u)
    for dtype, problem in nets.items():
        try:
            logits = problem(x.to(dtype))
        except Exception as e:
            raise AssertionError(f"{name}: the {dtype} network fails: {type(e).__name__}: {e}") from e
        assert logits.shape == (batch, n_classes), \
            f"{name}: the logits have shape {tuple(logits.shape)}, not (batch, n_classes) = {(batch, n_classes)}"
        assert logits.dtype == dtype, f"{name}: a {dtype} network gives {logits.dtype} logits (a fixed dtype inside?)"
        assert torch.isfinite(logits).all(), f"{name}: the logits of a {dtype} network are not finite"
    for what, F, u in checked:
        F.zero_grad()
        F(u).square().sum().backward()
        for key, p in F.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), \
                f"{name}: parameter {key} of {what} gets {'no' if p.grad is None else 'a non-finite'} gradient"


def _check_map(name: str, F: torch.nn.Module, u: torch.Tensor, batch: int, couples: bool, keeps_shape: bool) -> None:
    """:func:`check_step`'s checks of one map ``F`` (a step's or a transition) on states ``u``;
    ``name`` says which."""
    try:
        f = F(u)
    except Exception as e:
        raise AssertionError(f"{name} fails on states {tuple(u.shape)}: {type(e).__name__}: {e}") from e
    if keeps_shape:
        assert f.shape == u.shape, f"{name} changes the state's shape: {tuple(u.shape)} -> {tuple(f.shape)}"
    assert f.dtype == u.dtype, f"{name} gives {f.dtype} states for {u.dtype} ones (a fixed dtype inside?)"
    for mode in ("training", "evaluation"):
        F.train(mode == "training")
        with torch.no_grad():
            assert torch.equal(F(u), F(u)), f"{name} is not deterministic (in {mode} mode): one input, two outputs"
    F.train()
    if not couples:
        with torch.no_grad():
            whole = F(u)
            for i in range(batch):
                assert torch.allclose(F(u[i:i + 1]), whole[i:i + 1], rtol=1e-10, atol=1e-12), \
                    f"{name} couples the samples of a batch: sample {i} alone gives another output than in the " \
                    "batch (declare couples_samples=True if it must)"


# -- the multi-rank checks -----------------------------------------------------------------------
_STEPS = 4


def _ranks_side(cls: type[Solver], options: dict[str, Any], layers: int, comm: Comm) -> dict[str, Any] | None:
    """Train on ``comm``'s ranks and check the round trip and the seed there; rank 0 returns
    the combined losses and the whole problem's parameters."""
    x, y = _toy()
    problem, solver = _make(cls, options, layers, comm)
    records = _train(solver, x, y, _STEPS)
    state = _state_bytes(solver)
    after = _train(solver, x, y, _STEPS, epoch=1)
    twin_problem, twin = _restored(cls, options, state, layers, comm)
    resumed = _train(twin, x, y, _STEPS, epoch=1)
    again_problem, again = _make(cls, options, layers, comm)
    repeat = _losses(_train(again, x, y, _STEPS)) + _losses(_train(again, x, y, _STEPS, epoch=1))
    mine = {"resumes": _losses(resumed) == _losses(after) and _same_parameters(problem, twin_problem),
            "repeats": repeat == _losses(records) + _losses(after) and _same_parameters(problem, again_problem),
            "steps": records[1:-1] + after[1:-1], "params": solver.network.problem_state()}
    _check_fields(solver, records + after)
    gathered = comm.gather(mine)
    if gathered is None:
        return None
    fields = solver.record_fields()
    combined = [combine(list(s), fields) for s in zip(*(g["steps"] for g in gathered))]
    params = {k: v.tolist() for g in gathered for k, v in g["params"].items()}
    return {"ranks": comm.size, "resumes": [g["resumes"] for g in gathered],
            "repeats": [g["repeats"] for g in gathered], "losses": [r.get("loss") for r in combined],
            "params": params}


def _spec(cls: type[Solver]) -> str:
    """``module:Class`` or ``file.py:Class``: how the ranks find ``cls``."""
    if "<locals>" in cls.__qualname__:
        raise AssertionError(f"{cls.__qualname__} is defined inside a function; the multi-rank checks need a "
                             "class at the top level of a module or .py file")
    if cls.__module__ != "__main__" and not cls.__module__.startswith("ocnet_plugin_"):
        try:
            if getattr(importlib.import_module(cls.__module__), cls.__qualname__, None) is cls:
                return f"{cls.__module__}:{cls.__qualname__}"
        except ImportError:
            pass
    return f"{inspect.getfile(cls)}:{cls.__qualname__}"


def _load(spec: str) -> type[Solver]:
    from .config import load_plugins
    where, _, name = spec.rpartition(":")
    module = sys.modules[load_plugins(where)[0]]
    return getattr(module, name)


def _check_on_ranks(cls: type[Solver], options: dict[str, Any], layers: int, n: int,
                    reference: dict[str, Any] | None, rtol: float, timeout: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        args = [sys.executable, "-m", "mpi4py", "-m", "ocnet.runs.testing", _spec(cls), json.dumps(options),
                str(layers), str(out)]
        env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            proc = launch(n, args, timeout=timeout, env=env)
        except TimeoutError as e:
            raise AssertionError(f"{cls.name} on {n} ranks hangs: {e}") from None
        assert proc.returncode == 0 and out.exists(), f"{cls.name} on {n} ranks failed:\n{proc.stderr}"
        result = json.loads(out.read_text())
    assert all(result["resumes"]), (f"{cls.name} on {n} ranks: a solver restored from state_dict() diverges "
                                    f"on rank(s) {[r for r, ok in enumerate(result['resumes']) if not ok]}")
    assert all(result["repeats"]), f"{cls.name} on {n} ranks: two runs from one seed differ"
    for loss in result["losses"]:
        assert loss is not None and math.isfinite(loss), f"{cls.name} on {n} ranks: combined loss {loss}"
    if cls.rank_invariant and reference is not None:
        torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(reference["losses"]),
                                   rtol=rtol, atol=0.0, msg=lambda m: f"{cls.name}: losses on {n} ranks differ "
                                   f"from one process (the ranks' records combine wrongly, or the method "
                                   f"depends on the rank count):\n{m}")
        for k, v in reference["params"].items():
            got, want = torch.tensor(result["params"][k]), torch.tensor(v)
            assert torch.allclose(got, want, rtol=rtol, atol=rtol * 1e-3), (
                f"{cls.name}: {k} on {n} ranks differs from one process by {float((got - want).abs().max()):.3g}")


def _main(argv: Sequence[str]) -> None:
    from ..ranks.comm import world
    spec, options, layers, out = argv
    result = _ranks_side(_load(spec), json.loads(options), int(layers), world())
    if result is not None:
        Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1:])
