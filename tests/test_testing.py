"""The solver contract test catches broken solvers and passes the serial one."""
import pytest
import torch

from ocnet.runs.testing import check_solver
from ocnet.solvers import MGRIT, Hybrid, Penalty
from ocnet.solvers.serial import Serial


def test_serial_passes_the_contract():
    check_solver(Serial, exact=True)
    check_solver(Serial, micro_batches=3, exact=True)


class NoLearning(Serial):
    name = "no-learning"

    def step(self, x, y, index):
        with torch.no_grad():
            logits = self.network.head(self.network(x))
        return {"loss": float(self.network.loss(logits, y))}


class Forgetful(Serial):
    """Keeps an update counter that its state_dict forgets."""
    name = "forgetful"

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = 0

    def step(self, x, y, index):
        self.calls += 1
        self.set_lr(1e-2 / self.calls)
        return super().step(x, y, index)


@pytest.mark.parametrize("cls,message", [(NoLearning, "did not fall"), (Forgetful, "diverges")])
def test_contract_catches_broken_solvers(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_solver(cls)


# -- the multi-rank checks -----------------------------------------------------------------------
@pytest.mark.parametrize("cls,options", [
    (Serial, {"micro_batches": 2}),
    (Penalty, {"blocks": 3}),
    (MGRIT, {"coarsening": 2, "mgrit_levels": 2}),
    (Hybrid, {"blocks": 3, "parallel_epochs": 1, "serial_epochs": 1}),
])
@pytest.mark.mpi
def test_builtin_solvers_pass_on_two_and_three_ranks(cls, options):
    check_solver(cls, ranks=(2, 3), **options)


class LossOnEveryRank(Serial):
    """Reports the loss on every rank: summed over ranks, the record is wrong."""
    name = "loss-everywhere"

    def step(self, x, y, index):
        loss = super().step(x, y, index).get("loss", 0.0)
        return {"loss": self.comm.allreduce(loss)}


class BlocksPerRank(Penalty):
    """One block per rank (blocks = 0), yet claims the same method on any rank count."""
    name = "blocks-per-rank"


class Deadlock(Serial):
    """Waits for a message nobody sends, on two ranks."""
    name = "deadlock"

    def step(self, x, y, index):
        if self.comm.size > 1:
            self.comm.recv((self.comm.rank + 1) % self.comm.size, self.sweep_tags[1])
        return super().step(x, y, index)


@pytest.mark.parametrize("cls,message,kw", [
    (LossOnEveryRank, "losses on 2 ranks differ from one process", {}),
    (BlocksPerRank, "on 2 ranks differ", {}),
    (Deadlock, "deadlock on 2 ranks hangs", {"timeout": 4}),  # it hangs whenever the timeout falls
])
@pytest.mark.mpi
def test_multi_rank_checks_catch_broken_solvers(cls, message, kw):
    with pytest.raises(AssertionError, match=message):
        check_solver(cls, ranks=(2,), **kw)


def test_undeclared_record_fields_are_caught():
    class Chatty(Serial):
        name = "chatty"

        def step(self, x, y, index):
            return {**super().step(x, y, index), "gossip": 1.0}

    with pytest.raises(AssertionError, match="'gossip' is not declared"):
        check_solver(Chatty)
