"""The solver contract: options, partitions, tags, records, hooks, plug-ins, the public face."""
import ast
import json
from pathlib import Path

import pytest
import torch

import ocnet
from ocnet.model.grid import Partition
from ocnet.ranks.comm import SelfComm
from ocnet.ranks.tags import Tags
from ocnet.run import main
from ocnet.runs.config import ConfigError, help_text, resolve
from ocnet.solvers import MGRIT, Hybrid, Penalty, Serial
from ocnet.solvers.records import FIELDS, Field, combine, reduce

ROOT = Path(__file__).resolve().parents[1]


# -- the penalty blocks: a function of (layers, K) alone ------------------------------------------
def test_penalty_blocks_are_cut_from_the_layers_alone():
    assert Penalty.cuts(16, 4) == [0, 4, 8, 12, 16]
    for ranks, starts in ((1, (0,)), (2, (0, 8)), (3, (0, 8, 12)), (4, (0, 4, 8, 12))):
        p = Penalty.partition(16, ranks, {"blocks": 4})
        assert tuple(p.bounds(r)[0] for r in range(ranks)) == starts
    with pytest.raises(ValueError, match="2 blocks for 3 ranks"):
        Penalty.partition(16, 3, {"blocks": 2})


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.mark.mpi
def test_penalty_on_three_ranks_equals_one_rank(mpi, tmp_path):
    """K = 4 blocks on 16 layers: the same method at P = 3 as at P = 1 (float64)."""
    flags = ["--solver", "penalty", "--blocks", "4", "--epochs", "2", "--dtype", "float64", "--quiet",
             "--threads", "1"]
    assert main([*flags, "--out", str(tmp_path / "p1")]) == 0
    proc = mpi(3, "ocnet.run", *flags, "--out", str(tmp_path / "p3"), module=True, plain=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    one, three = _records(tmp_path / "p1"), _records(tmp_path / "p3")
    for key in ("loss", "constraint_violation", "penalized_objective"):
        a = torch.tensor([r[key] for r in one if r["kind"] == "iter"], dtype=torch.float64)
        b = torch.tensor([r[key] for r in three if r["kind"] == "iter"], dtype=torch.float64)
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=key)
    m1, m3 = torch.load(tmp_path / "p1" / "model.pt"), torch.load(tmp_path / "p3" / "model.pt")
    for k in m1:
        torch.testing.assert_close(m3[k], m1[k], rtol=1e-9, atol=1e-12)


def test_mgrit_partition_starts_at_coarse_points():
    cfg = {"coarsening": 4, "mgrit_levels": 2}
    p = MGRIT.partition(30, 4, cfg)
    assert [p.bounds(r) for r in range(4)] == [(0, 8), (8, 16), (16, 24), (24, 30)]
    with pytest.raises(ValueError, match="multiple of c\\^\\(levels-1\\) = 16"):
        MGRIT.partition(30, 4, {"coarsening": 4, "mgrit_levels": 3})


def test_partition_with_explicit_starts():
    p = Partition.aligned([0, 3, 5, 9], 2)
    assert [p.bounds(r) for r in range(2)] == [(0, 5), (5, 9)]
    with pytest.raises(ValueError, match="do not cut"):
        Partition(9, 2, (0, 0))


# -- records ----------------------------------------------------------------------------------------
def test_fields_combine_by_their_declared_rule():
    ranks = [{"rho": 2.0, "constraint_violation": 1.0, "residual": {"forward": [1.0]}},
             {"rho": 2.0, "constraint_violation": 0.5, "loss": 0.25, "residual": {"forward": [1.0]}}]
    out = combine(ranks)
    assert out == {"rho": 2.0, "constraint_violation": 1.5, "loss": 0.25, "residual": {"forward": [1.0]}}
    fields = {**FIELDS, "peak": Field("max"), "low": Field("min")}
    assert combine([{"peak": 1, "low": 3}, {"peak": 5, "low": 2}], fields) == {"peak": 5, "low": 2}
    histogram = {**FIELDS, "stale": Field("sum")}  # counts per key add up over the ranks
    assert combine([{"stale": {"0": 3, "1": 1}}, {"stale": {"1": 2, "2": 5}}], histogram) == \
        {"stale": {"0": 3, "1": 3, "2": 5}}
    assert reduce(SelfComm(), "rho", 3.0) == 3.0
    with pytest.raises(ValueError, match="combine rule"):
        Field("average")


# -- configuration, help, the hybrid's partner ----------------------------------------------------
def test_help_lists_each_option_once_with_its_choices():
    text = help_text()
    for key in ("--rho ", "--blocks ", "--micro-batches ", "--mgrit-levels "):
        assert text.count("\n  " + key) == 1, key
    assert "{adam,sgd}" in text and "{V,F}" in text and "{plan,adaptive}" in text
    assert "(and the options of penalty)" in text
    assert "only at the end if resume is used" not in text


def test_hybrid_takes_its_partners_options():
    config = resolve(["--solver", "hybrid", "--parallel", "mgrit", "--mgrit-levels", "3"])
    assert config["mgrit_levels"] == 3 and "rho" not in config
    assert resolve(["--solver", "hybrid"])["rho"] == 1.0
    with pytest.raises(ConfigError, match="not of 'hybrid'"):
        resolve(["--solver", "hybrid", "--mgrit-levels", "3"])
    with pytest.raises(ConfigError, match="'serial' is not a parallel solver"):
        resolve(["--solver", "hybrid", "--parallel", "serial"])
    from ocnet import ParallelSolver
    assert issubclass(MGRIT, ParallelSolver) and issubclass(Penalty, ParallelSolver)
    assert not issubclass(Serial, ParallelSolver) and not issubclass(Hybrid, ParallelSolver)


@pytest.mark.mpi
def test_hybrid_with_mgrit_adaptive_records_factors(mpi, tmp_path):
    out = tmp_path / "run"
    proc = mpi(2, "ocnet.run", "--solver", "hybrid", "--parallel", "mgrit", "--mgrit-levels", "3",
               "--switch", "adaptive", "--layers", "32", "--epochs", "2", "--quiet", "--out", str(out),
               module=True, plain=True,
               timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "mgrit_levels = 3" in (out / "config.toml").read_text()
    iters = [r for r in _records(out) if r["kind"] == "iter"]
    parallel = [r for r in iters if r["phase"] == "parallel"]
    assert parallel and all(set(r["conv_factor"]) == {"forward", "adjoint"} for r in parallel)
    assert all(len(r["residual"]["forward"]) >= 2 for r in parallel)


# -- tags -------------------------------------------------------------------------------------------
def test_tags_are_handed_out_once():
    tags = Tags(range(100, 110))
    assert list(tags.take(3)) == [100, 101, 102] and list(tags.take(2)) == [103, 104]
    with pytest.raises(RuntimeError, match="no 6 message tags left"):
        tags.take(6)


def test_solvers_of_a_hybrid_send_with_their_own_tags():
    from ocnet.runs.testing import _make
    _, hybrid = _make(Hybrid, {"parallel": "mgrit", "coarsening": 2})
    used = [set(hybrid.parallel.sweep_tags), set(hybrid.parallel.mgrit_tags), set(hybrid.serial.sweep_tags),
            set(hybrid.sweep_tags)]
    assert sum(map(len, used)) == len(set().union(*used))
    _, penalty = _make(Penalty, {})
    assert {penalty.output_tag, penalty.target_tag}.isdisjoint(penalty.sweep_tags)


# -- the end-of-epoch hook --------------------------------------------------------------------------
class Deferred(Serial):
    """Accumulates the epoch's gradients and steps once, at the end of the epoch."""

    name = "deferred-test"
    fields = {"deferred_steps": Field("sum", "deferred steps")}

    def begin_epoch(self, epoch, x, y):
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
        return {}

    def step(self, x, y, index):
        from ocnet import sweep
        loss = sweep.train(self.comm, self.network, x, y, len(y), device=self.device, tags=self.sweep_tags)
        self.pending += 1
        return {} if loss is None else {"loss": loss}

    def end_epoch(self, epoch):
        self.optimizer.step()
        return {"deferred_steps": self.pending}


def test_end_of_epoch_hook_finishes_the_epoch_before_evaluation():
    from ocnet.model.data import Dataset
    from ocnet.runs.testing import _make, _toy
    from ocnet.runs.train import fit
    x, y = _toy()
    data = Dataset("toy", x, y, x, y, 3, False)
    problem, solver = _make(Deferred, {})
    before = [p.detach().clone() for p in problem.parameters()]
    last = fit(solver, data, SelfComm(), epochs=1, batch_size=16, seed=0, lr=lambda e: 1e-2,
               augment_images=False)
    assert last["deferred_steps"] == 4
    assert all(not torch.equal(a, b) for a, b in zip(before, problem.parameters()))


# -- the public face and the import graph -----------------------------------------------------------
def test_public_names():
    for name in ("Solver", "ParallelSolver", "register", "Option", "check_solver", "sweep", "Problem", "solve",
                 "SolverError", "Field"):
        assert hasattr(ocnet, name), name
    assert ocnet.ranks.sweep.train is not None and callable(ocnet.solve)


def _imports(path: Path, module: str) -> set[str]:
    """The ocnet modules ``module`` imports anywhere in its source (also inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ocnet")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if not base.startswith("ocnet"):
                continue
            for alias in node.names:  # `from . import sweep` imports the module ocnet.ranks.sweep
                sub = f"{base}.{alias.name}"
                found.add(sub if (ROOT / (sub.replace(".", "/") + ".py")).exists()
                          or (ROOT / sub.replace(".", "/")).is_dir() else base)
    return found - {module}


def test_the_package_has_no_import_circle():
    modules = {}
    for path in (ROOT / "ocnet").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {m: {i for i in _imports(p, m) if i in modules} for m, p in modules.items()}
    graph["ocnet"] = set()  # the package's face imports everything; nothing imports the face
    state: dict[str, int] = {}

    def visit(m, trail):
        if state.get(m) == 1:
            raise AssertionError("import circle: " + " -> ".join(trail[trail.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for nxt in sorted(graph[m]):
            visit(nxt, trail + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])
    assert "ocnet.solvers" in graph["ocnet.runs.config"], "config reads the registry at the top"


# -- a diverged solve ends the run with one line ----------------------------------------------------
@pytest.mark.mpi
def test_mgrit_divergence_is_the_runs_clear_error(mpi, tmp_path):
    """Steps of h = 6e4 with ReLU overflow float32: the solve stops at the first non-finite
    residual and every rank ends with one message and status 3."""
    proc = mpi(2, "ocnet.run", "--solver", "mgrit", "--activation", "relu", "--final-time", "1e6", "--epochs", "1",
               "--quiet",
               "--out", str(tmp_path / "run"), module=True, plain=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("ocnet: error:") == 1, proc.stderr
    assert "mgrit: the forward solve diverged: MGRIT: the residual is" in proc.stderr
    assert "at iteration" in proc.stderr and "Traceback" not in proc.stderr
