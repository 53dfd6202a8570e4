"""The amp solver on P ranks: rank 0 writes what tests/test_amp.py checks to argv[1] (JSON).

* "serial": amp_in_flight = 1 and amp_update_every = micro_batches against the serial
  solver after a few steps (bitwise);
* "repeat": default flight, k ≠ micro_batches, run twice, the second time with one rank's
  forwards slowed (a hook that sleeps): losses and parameters, bitwise;
* on 2 ranks also "resume": the state taken after a step with micro-batches in flight,
  loaded into a fresh solver, continues bit for bit (the loaded one recomputes where the
  first used its graph); "staleness": the histograms of P = 2, m = 2, k = 1; "hybrid": the
  hybrid with amp as its parallel solver and a serial step every other step.
"""
import io
import json
import sys
import time

import torch

from ocnet.ranks import timeline
from ocnet.ranks.comm import world
from ocnet.runs.testing import _make, _toy
from ocnet.solvers import AMP, Hybrid, Serial

torch.set_num_threads(1)
comm = world()
P, rank = comm.size, comm.rank
x, y = _toy()
out: dict = {}


def batch(s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    idx = torch.arange(len(y)).roll(-8 * s)[:24]
    return x[idx], y[idx], idx


def run(cls, options: dict, steps: int, slow: int = -1, solver=None, first: int = 0, end: bool = True):
    """Train ``steps`` steps (from step ``first``); returns (problem, solver, records)."""
    problem = None
    if solver is None:
        problem, solver = _make(cls, options, layers=6, comm=comm)
    hook = solver.network.layers[0].register_forward_pre_hook(lambda *a: time.sleep(0.005)) \
        if rank == slow else None
    records = [solver.step(*batch(s)) for s in range(first, first + steps)]
    if end:
        records.append(solver.end_epoch(0))
    if hook is not None:
        hook.remove()
    return problem, solver, records


def gathered(value):
    return comm.gather(value)


def loss_list(records):
    return [r.get("loss") for r in records]


# 1. amp with one micro-batch in flight and an update per batch is the serial solver
a, _, ra = run(AMP, {"micro_batches": 4, "amp_update_every": 4, "amp_in_flight": 1}, 3)
s, _, rs = run(Serial, {"micro_batches": 4}, 3)
same = all(torch.equal(p, q) for p, q in zip(a.parameters(), s.parameters()))
out["serial"] = {"same": gathered(same), "losses": gathered([loss_list(ra[:-1]), loss_list(rs[:-1])])}

# 2. one result whatever the timing
opts = {"micro_batches": 4, "amp_update_every": 3}
a1, _, r1 = run(AMP, opts, 4)
a2, _, r2 = run(AMP, opts, 4, slow=P // 2)
out["repeat"] = {"same": gathered(all(torch.equal(p, q) for p, q in zip(a1.parameters(), a2.parameters()))
                                  and r1 == r2), "records": gathered(r1)}

if P == 2:
    # 3. the state in the middle of the pipeline: micro-batches in flight on rank 0
    opts = {"micro_batches": 4, "amp_update_every": 4}
    p1, first, _ = run(AMP, opts, 1, end=False)
    held = len(first._pending)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    p2, twin = _make(AMP, opts, layers=6, comm=comm)
    twin.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    kinds = []
    for solver in (first, twin):
        rec = timeline.Recorder()
        with timeline.recording(rec):
            _, _, records = run(AMP, opts, 3, solver=solver, first=1)
        kinds.append(({k: sum(e[0] == k for e in rec.events) for k in ("backward", "forward_graph")}, records))
    same = all(torch.equal(p, q) for p, q in zip(p1.parameters(), p2.parameters()))
    out["resume"] = {"held": gathered(held), "same": gathered(same and kinds[0][1] == kinds[1][1]),
                     "kinds": gathered([k for k, _ in kinds]), "records": gathered(kinds[0][1])}

    # 4. the staleness of P = 2, m = 2, k = 1 (tests/test_amp.py works it out)
    _, _, records = run(AMP, {"micro_batches": 4, "amp_update_every": 1, "amp_in_flight": 2}, 3)
    out["staleness"] = gathered([r["staleness"] for r in records])

    # 5. the hybrid settles amp before each serial step
    problem, hybrid = _make(Hybrid, {"parallel": "amp", "serial_every": 2, "micro_batches": 4,
                                     "amp_update_every": 2}, layers=6, comm=comm)
    hybrid.begin_epoch(0, x, y)
    records = [hybrid.step(*batch(s)) for s in range(5)]
    records.append(hybrid.end_epoch(0))
    out["hybrid"] = gathered({"records": records, "empty": not hybrid.parallel._pending,
                              "finite": all(bool(torch.isfinite(p).all()) for p in problem.parameters())})

if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
