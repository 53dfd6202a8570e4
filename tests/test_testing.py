"""The solver contract test catches broken solvers and passes the serial one."""
import pytest
import torch

from ocnet.solvers.serial import Serial
from ocnet.testing import check_solver


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
