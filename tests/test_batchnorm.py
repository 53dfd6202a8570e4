"""Batch norm inside layer-parallel training: the serial solver on two ranks against plain
PyTorch on the exported module, one running-statistics update per step under MGRIT's many
evaluations, and evaluation with the running statistics."""
from __future__ import annotations

import pytest
import torch
from conftest import flat, one_step, run_mpi

from ocnet.model import batchnorm
from ocnet.model.data import batches, load
from ocnet.model.problem import build, from_config
from ocnet.runs.config import resolve

pytestmark = pytest.mark.usefixtures("one_thread")

FLAGS = ["--net", "conv", "--norm", "batch", "--layers", "4", "--channels", "8", "--dtype", "float64",
         "--epochs", "1", "--limit-batches", "3"]


@pytest.mark.mpi
def test_serial_on_two_ranks_equals_plain_pytorch(tmp_path):
    """``--norm batch``, one micro-batch, P = 2, three Adam steps on the digits: the parameters
    and the running statistics equal those of the exported module trained by plain PyTorch
    on the same batches (float64, rtol 1e-10)."""
    out = tmp_path / "run"
    proc = run_mpi(2, "ocnet.run", *FLAGS, "--quiet", "--timeline-steps", "0", "--out", str(out), module=True,
                   timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = torch.load(out / "model.pt")

    config = resolve(FLAGS)
    data = load("digits", seed=config["seed"]).to("cpu", torch.float64)
    model = from_config(config, data.input_shape, data.n_classes).to_torch()
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    for idx in batches(len(data.y_train), config["batch_size"], config["seed"], 0)[:3]:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        opt.step()
    reference = dict(zip(trained, model.state_dict().values()))  # the same order: opening, layers, classifier
    assert any("running_var" in k for k in trained) and len(reference) == len(trained)
    for k, v in trained.items():
        torch.testing.assert_close(v, reference[k], rtol=1e-10, atol=1e-13, msg=k)


def _step(name: str, **options):
    problem = build((3, 8, 8), 5, net="conv", layers=8, channels=[4], norm="batch", seed=1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 5, (16,), generator=gen)
    with batchnorm.one_update(problem):
        grads = flat(one_step(name, problem, x, y, **options)[0])
    stats = {k: v for k, v in problem.state_dict().items() if "running" in k or "num_batches" in k}
    return grads, stats


def test_mgrit_updates_the_running_statistics_once_per_step():
    """Exact-mode MGRIT evaluates each layer many times; its gradients and its running
    statistics after the step are the serial solver's (one update, from the final states)."""
    g_serial, s_serial = _step("serial")
    g_mgrit, s_mgrit = _step("mgrit", mgrit_tol=1e-12, coarsening=2, mgrit_levels=3)
    assert float((g_mgrit - g_serial).norm() / g_serial.norm()) < 1e-8
    assert set(s_mgrit) == set(s_serial)
    for k in s_serial:
        torch.testing.assert_close(s_mgrit[k], s_serial[k], rtol=1e-8, atol=1e-12, msg=k)
    assert int(s_mgrit["layers.3.F.norm.num_batches_tracked"]) == 1


def test_frozen_and_evaluation_modes():
    problem = build((3, 8, 8), 5, net="conv", layers=2, channels=[4], norm="batch", seed=1, dtype=torch.float64)
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    before = {k: v.clone() for k, v in problem.state_dict().items()}
    with batchnorm.frozen(problem):
        problem(x)
    assert all(torch.equal(v, before[k]) for k, v in problem.state_dict().items())
    problem(x)  # outside the contexts, torch's behaviour: the statistics move
    assert not torch.equal(problem.state_dict()["layers.0.F.norm.running_mean"], before["layers.0.F.norm.running_mean"])
    with batchnorm.evaluating(problem):
        assert not problem.training
        torch.testing.assert_close(problem(x[:1]), problem(x)[:1])  # running statistics: samples apart
    assert problem.training
