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


def test_the_documented_example_solver_works():
    """docs/own_solver.rst's example registers, validates its option and passes the contract."""
    from pathlib import Path

    from ocnet.config import resolve
    from ocnet.solvers import SOLVERS

    text = (Path(__file__).resolve().parents[1] / "docs" / "own_solver.rst").read_text()
    block = text.split("with one\noption of its own::\n", 1)[1].split("\nOnce the module", 1)[0]
    namespace: dict = {}
    exec("\n".join(line[4:] for line in block.splitlines()), namespace)
    try:
        cls = SOLVERS["clipped"]
        assert resolve(["--solver", "clipped", "--clip", "0.5"])["clip"] == 0.5
        check_solver(cls, clip=10.0)
        check_solver(cls, clip=1e9, exact=True)
    finally:
        SOLVERS.pop("clipped", None)
