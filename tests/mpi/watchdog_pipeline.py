"""A forward-backward pipeline over the ranks in which one rank stops, for the stall watchdog.

argv: TIMEOUT MODE CULPRIT.  At step 3 rank CULPRIT, after receiving its input, does MODE:

* ``hang`` — sleeps for ever (its watchdog thread still runs),
* ``hold`` — hangs in a C call that keeps the interpreter (its watchdog cannot run),
* ``kill`` — sends itself SIGKILL (run each rank under ``slow_reaper.py``, so that the
  launcher leaves the job running),
* ``slow`` — nothing; instead rank 0 computes 0.6 TIMEOUT before every step, so that every
  wait is shorter than the timeout but the run lasts longer than it (prints "done").
"""
import ctypes
import os
import signal
import sys
import time

import torch

from ocnet.ranks.comm import abort_on_exception, world

timeout, mode, culprit = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
comm = world()
abort_on_exception(comm)
comm.start_watchdog(timeout)
r, P = comm.rank, comm.size
for step in range(6):
    comm.where(f"epoch 0, step {step}")
    if mode == "slow" and r == 0:
        time.sleep(0.6 * timeout)
    x = torch.zeros(4) if r == 0 else comm.recv(r - 1, tag=11)
    if step == 3 and r == culprit and mode != "slow":
        os.write(2, f"rank {r} stops at {time.time()}\n".encode())
        if mode == "hang":
            while True:
                time.sleep(1)
        if mode == "hold":
            ctypes.PyDLL(None).sleep(3600)  # PyDLL calls keep the GIL
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
    if r < P - 1:
        comm.send(x + 1, r + 1, tag=11)
        x = comm.recv(r + 1, tag=12)
    if r > 0:
        comm.send(x, r - 1, tag=12)
comm.stop_watchdog()
print(f"rank {r} done", flush=True)
