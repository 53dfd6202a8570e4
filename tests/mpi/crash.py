"""ocnet.run with a solver that raises on rank 1 at its third step (argv: run flags)."""
import sys

from ocnet.run import main
from ocnet.solvers import register
from ocnet.solvers.serial import Serial


@register
class Crashing(Serial):
    name = "crashing"
    calls = 0

    def step(self, x, y, index):
        Crashing.calls += 1
        if self.comm.rank == 1 and Crashing.calls == 3:
            raise RuntimeError("injected failure on rank 1")
        return super().step(x, y, index)


sys.exit(main(sys.argv[1:]))
