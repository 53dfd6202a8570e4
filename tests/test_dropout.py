"""Dropout keyed by (seed, epoch, sample, layer): the masks, exact gradients through them, and
a history that the rank count and the micro-batching leave unchanged."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import flat, one_step, run_mpi

from ocnet import sweep
from ocnet.model import dropout
from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks.comm import SelfComm


def test_masks_drop_the_rate_and_follow_the_sample():
    index = torch.arange(100, 300)
    with dropout.samples(seed=3, epoch=1, index=index):
        m = dropout.mask(torch.Size((200, 50)), layer=4, p=0.25, device=torch.device("cpu"), dtype=torch.float64)
    assert set(m.unique().tolist()) == {0.0, 1 / 0.75}
    dropped = float((m == 0).double().mean())
    assert abs(dropped - 0.25) < 4 * (0.25 * 0.75 / m.numel()) ** 0.5  # within four standard deviations
    # a sample's mask is its own, wherever it sits in whichever batch
    with dropout.samples(3, 1, index.flip(0)[:50]):
        flipped = dropout.mask(torch.Size((50, 50)), 4, 0.25, torch.device("cpu"), torch.float64)
    torch.testing.assert_close(flipped, m.flip(0)[:50], rtol=0, atol=0)
    with dropout.samples(3, 1, index), dropout.narrow(slice(20, 30)):
        torch.testing.assert_close(dropout.mask(torch.Size((10, 50)), 4, 0.25, torch.device("cpu"), torch.float64),
                                   m[20:30], rtol=0, atol=0)
    # another layer, epoch or seed draws another mask
    for seed, epoch, layer in ((3, 1, 5), (3, 2, 4), (4, 1, 4)):
        with dropout.samples(seed, epoch, index):
            other = dropout.mask(torch.Size((200, 50)), layer, 0.25, torch.device("cpu"), torch.float64)
        assert float((other != m).double().mean()) > 0.2
    assert dropout.mask(torch.Size((200, 50)), 4, 0.25, torch.device("cpu"), torch.float64) is None


def test_a_batch_piece_must_narrow_the_samples():
    with dropout.samples(0, 0, torch.arange(8)), pytest.raises(RuntimeError, match="must narrow"):
        dropout.mask(torch.Size((4, 3)), 0, 0.1, torch.device("cpu"), torch.float64)


def _problem(net: str = "dense"):
    shape = (3, 8, 8) if net == "conv" else (1, 8, 8)
    return build(shape, 5, net=net, layers=8, channels=[4], width=8, dropout=0.2, seed=2, dtype=torch.float64), shape


@pytest.mark.parametrize("net", ["dense", "conv"])
@pytest.mark.parametrize("micro_batches", [1, 4])
def test_serial_gradients_through_dropout_equal_autograd(net, micro_batches):
    problem, shape = _problem(net)
    reference = problem.to_torch()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, *shape, generator=gen, dtype=torch.float64), torch.randint(0, 5, (12,), generator=gen)
    index = torch.randperm(1000, generator=gen)[:12]
    with dropout.samples(7, 2, index):
        loss = sweep.train(SelfComm(), problem.local(Partition(8, 1), 0), x, y, 12, micro_batches=micro_batches)
        ref = torch.nn.functional.cross_entropy(reference(x), y)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    assert abs(loss - torch.nn.functional.cross_entropy(reference(x), y).item()) > 1e-6  # the masks did act
    for (key, p), q in zip(problem.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14, msg=key)


def test_mgrit_relaxations_reuse_the_masks():
    """Exact-mode MGRIT evaluates each layer many times; with the same mask every time its
    gradient is the serial solver's."""
    grads = {}
    for name, options in (("serial", {}), ("mgrit", dict(mgrit_tol=1e-12, coarsening=2, mgrit_levels=3))):
        problem, shape = _problem()
        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(16, *shape, generator=gen, dtype=torch.float64), torch.randint(0, 5, (16,), generator=gen)
        with dropout.samples(0, 0, torch.arange(16)):
            grads[name] = flat(one_step(name, problem, x, y, **options)[0])
    assert float((grads["mgrit"] - grads["serial"]).norm() / grads["serial"].norm()) < 1e-8


@pytest.mark.mpi
def test_history_is_the_same_on_any_ranks_and_micro_batches(tmp_path):
    """``--dropout 0.1``, float64, two epochs of three steps: P = 1, 2, 4, with 1 or 4
    micro-batches, give the same losses and parameters."""
    runs = {}
    for ranks, micro in ((1, 1), (1, 4), (2, 4), (4, 1)):
        out = tmp_path / f"p{ranks}m{micro}"
        proc = run_mpi(ranks, "ocnet.run", "--dropout", "0.1", "--dtype", "float64", "--epochs", "2",
                       "--limit-batches", "3", "--micro-batches", str(micro), "--quiet", "--timeline-steps", "0",
                       "--out", str(out), module=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
        runs[ranks, micro] = ([r["loss"] for r in history if r["kind"] == "iter"], torch.load(out / "model.pt"))
    losses, model = runs[1, 1]
    for key, (other_losses, other_model) in runs.items():
        assert other_losses == pytest.approx(losses, rel=1e-12), key
        for k in model:
            torch.testing.assert_close(other_model[k], model[k], rtol=1e-10, atol=1e-13, msg=f"{key} {k}")
