"""Runs killed while they write checkpoints, and resumed: ``ocnet.run.main`` on one process.

argv: ROOT PLAN  (PLAN: JSON ``{"chain": [fault, …]}``)

Each chain is one run directory ``ROOT/chain``: its first run starts it (``--out``), each
next one resumes it (``--resume``), each with its ``OCNET_FAULT`` (``""``: none).  Every run
is a child forked from this process once the imports, the data and the first optimiser
(which imports torch._dynamo) are done, so that a run costs its training and not an
interpreter's start-up; this process never starts MPI, each child does.  A run's output
goes to ``ROOT/logs/CHAIN_I.txt``.  Writes ``ROOT/result.json``: per chain and run, the
exit status (``-SIG`` for a signal) and the temporary files the run left.
"""
import importlib
import json
import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)  # no thread pool before fork

from ocnet import run  # noqa: E402
from ocnet.model.data import load  # noqa: E402
from ocnet.runs import faults  # noqa: E402

# No figures: the runs are compared by their records and parameters, and each finished run
# would spend seconds drawing.
FLAGS = ["--layers", "4", "--epochs", "3", "--checkpoint-every", "1", "--dtype", "float64", "--quiet",
         "--threads", "1", "--plots", "none"]
root, plan = Path(sys.argv[1]), json.loads(sys.argv[2])
load("digits", None, 0)
torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def launch(argv: list[str], fault: str, log: Path) -> int:
    """Run ``ocnet.run.main(argv)`` in a child with ``OCNET_FAULT=fault``; its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ["OCNET_FAULT"] = fault
            importlib.reload(faults)  # it reads OCNET_FAULT once, on import
            code = run.main(argv)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


result = {}
(root / "logs").mkdir(parents=True)
for chain, chain_faults in plan.items():
    out = root / chain
    result[chain] = []
    for i, fault in enumerate(chain_faults):
        where = ["--out", str(out)] if i == 0 else ["--resume", str(out)]
        status = launch([*FLAGS, *where], fault, root / "logs" / f"{chain}_{i}.txt")
        tmps = sorted(str(p.relative_to(out)) for p in out.rglob(".*.tmp")) if out.exists() else []
        result[chain].append({"fault": fault, "status": status, "tmp": tmps})
(root / "result.json").write_text(json.dumps(result, indent=1))
