"""Ranks that fail in a pipeline while the others wait on them (argv: MODE CULPRIT).

At step 3 rank CULPRIT does MODE:

* ``raise`` — closes ``sys.stderr`` and raises: the abort hook must still get its line out,
* ``segv`` — a segmentation fault;

or, with MODE ``loop``, the pipeline runs until a signal stops it (rank 0 prints
"running" after the first step).
"""
import itertools
import os
import signal
import sys

import torch

from ocnet.ranks.comm import abort_on_exception, world

mode, culprit = sys.argv[1], int(sys.argv[2])
comm = world()
abort_on_exception(comm)
r, P = comm.rank, comm.size
for step in itertools.count() if mode == "loop" else range(6):
    x = torch.zeros(4) if r == 0 else comm.recv(r - 1, tag=11)
    if step == 3 and r == culprit:
        if mode == "raise":
            sys.stderr.close()
            raise RuntimeError(f"boom at step {step}")
        if mode == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
    if r < P - 1:
        comm.send(x + 1, r + 1, tag=11)
        x = comm.recv(r + 1, tag=12)
    if r > 0:
        comm.send(x, r - 1, tag=12)
    if step == 0 and r == 0:
        print("running", flush=True)
