"""The serial solver: exact gradients against torch autograd, rank-count invariance."""
import pytest
import torch

from ocnet import sweep
from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks.comm import SelfComm
from ocnet.solvers.serial import Serial

NETS = {
    "dense": dict(input_shape=(1, 8, 8), net="dense", layers=6, width=16),
    "multistage-conv": dict(input_shape=(3, 8, 8), net="conv", layers=6, channels=[4, 8, 16]),
}


def _batch(shape, n=10, classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *shape, generator=gen, dtype=torch.float64),
            torch.randint(0, classes, (n,), generator=gen))


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("micro_batches", [1, 3])
def test_gradients_equal_autograd(name, micro_batches, device):
    spec = dict(NETS[name])
    shape = spec.pop("input_shape")
    problem = build(shape, 5, seed=1, dtype=torch.float64, **spec).to(device)
    reference = problem.to_torch()
    x, y = (t.to(device) for t in _batch(shape))

    network = problem.local(Partition(problem.n_layers, 1), 0)
    loss = sweep.train(SelfComm(), network, x, y, len(y), micro_batches=micro_batches, device=device)
    ref_loss = torch.nn.functional.cross_entropy(reference(x), y)
    ref_loss.backward()

    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)
    for (name_, p), q in zip(problem.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14, msg=name_)


def test_export_has_same_outputs(device):
    problem = build((3, 8, 8), 5, net="conv", layers=4, channels=[4, 8], seed=2, dtype=torch.float64).to(device)
    x, _ = _batch((3, 8, 8))
    exported = problem.to_torch()
    assert type(exported) is torch.nn.Sequential
    torch.testing.assert_close(exported(x.to(device)), problem(x.to(device)), rtol=0, atol=0)
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in problem.parameters())


def test_step_decreases_loss_and_reports_it():
    problem = build((1, 8, 8), 5, net="dense", layers=4, seed=0, dtype=torch.float64)
    x, y = _batch((1, 8, 8), n=32)
    solver = Serial(problem.local(Partition(4, 1), 0), SelfComm(), lambda p: torch.optim.Adam(p, lr=1e-2))
    losses = [solver.step(x, y, torch.arange(32))["loss"] for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]


@pytest.fixture(scope="module")
def single_rank(tmp_path_factory):
    """The P = 1 reference per network, computed once."""
    from conftest import run_mpi
    out = {}
    for net in ("dense", "conv", "transformer"):
        path = tmp_path_factory.mktemp("p1") / f"{net}.pt"
        proc = run_mpi(1, "serial_step.py", str(path), net, "1")
        assert proc.returncode == 0, proc.stderr
        out[net] = torch.load(path)[1]
    return out


@pytest.mark.parametrize("net,ranks,pipeline", [("dense", 2, "1f1b"), ("dense", 4, "1f1b"), ("conv", 2, "1f1b"),
                                               ("conv", 4, "1f1b"), ("conv", 2, "zb"), ("dense", 4, "zb"),
                                               ("transformer", 2, "1f1b"), ("transformer", 4, "zb")])
@pytest.mark.mpi
def test_ranks_give_same_parameters(mpi, tmp_path, single_rank, net, ranks, pipeline):
    """Two training steps on P ranks, with and without micro-batches, under each pipeline
    schedule, equal P = 1 (float64, rtol 1e-10)."""
    out = tmp_path / "many.pt"
    proc = mpi(ranks, "serial_step.py", str(out), net, "1,3", pipeline, timeout=120)
    assert proc.returncode == 0, proc.stderr
    one = single_rank[net]
    for micro, many in torch.load(out).items():
        assert many["loss"] == pytest.approx(one["loss"], rel=1e-12)
        assert one["params"].keys() == many["params"].keys()
        for k in one["params"]:
            torch.testing.assert_close(many["params"][k], one["params"][k], rtol=1e-10, atol=1e-13,
                                       msg=f"{k}, {micro} micro-batches")


def test_pipeline_option():
    """``pipeline`` names a schedule; another name fails with a message that lists them."""
    from ocnet.model.options import ConfigError
    option = Serial.options["pipeline"]
    assert set(option.choices) == {"1f1b", "zb", "interleaved", "v"} and option.default in option.choices
    assert option.convert("pipeline", "zb") == "zb"
    with pytest.raises(ConfigError, match="1f1b"):
        option.convert("pipeline", "gpipe")
    x, y = _batch((1, 8, 8), n=12)
    losses = {}
    for name in ("1f1b", "zb"):
        problem = build((1, 8, 8), 5, net="dense", layers=4, seed=0, dtype=torch.float64)
        solver = Serial(problem.local(Partition(4, 1), 0), SelfComm(),
                        lambda p: torch.optim.SGD(p, lr=0.1), micro_batches=3, pipeline=name)
        losses[name] = [solver.step(x, y, torch.arange(12))["loss"] for _ in range(3)]
    assert losses["zb"] == pytest.approx(losses["1f1b"], rel=1e-12)


def test_one_f_one_b_schedule_is_complete():
    for size in (1, 2, 4):
        for rank in range(size):
            for m in (1, 2, 5):
                ops = sweep.one_f_one_b(rank, size, m)
                assert sorted(ops) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
                # a micro-batch goes backward only after its forward
                assert all(ops.index(("F", i)) < ops.index(("B", i)) for i in range(m))
                live = max(sum(1 for o in ops[:j + 1] if o[0] == "F") - sum(1 for o in ops[:j + 1] if o[0] == "B")
                           for j in range(len(ops)))
                assert live <= min(m, size - rank)
