"""Exercise every Comm operation on P ranks; rank 0 writes what each rank saw (argv[1])."""
import json
import sys

import torch

from ocnet.ranks.comm import world

comm = world()
r, P = comm.rank, comm.size
left, right = (r - 1) % P, (r + 1) % P
report = {}

# A ring exchange of tensors of several dtypes and shapes.
sent_before = comm.bytes_sent
payloads = {
    "f64": torch.full((2, 3), float(r), dtype=torch.float64),
    "f32": torch.arange(5, dtype=torch.float32) + r,
    "i64": torch.tensor([r, r * 10]),
    "bool": torch.tensor([r % 2 == 0]),
    "empty": torch.empty(0, 4),
    "4d": torch.full((1, 2, 3, 4), float(r)),
}
got = {}
for i, (name, t) in enumerate(payloads.items()):
    got[name] = comm.exchange({right: t}, [left], tag=100 + i)[left]
report["ring_ok"] = all(
    g.dtype == payloads[n].dtype and g.shape == payloads[n].shape
    and torch.equal(g, payloads[n] - r + left if n not in ("bool", "i64") else
                    (torch.tensor([left % 2 == 0]) if n == "bool" else torch.tensor([left, left * 10])))
    for n, g in got.items())
report["bytes"] = comm.bytes_sent - sent_before
report["bytes_expected"] = sum(t.numel() * t.element_size() for t in payloads.values())

# Collectives (not counted as payload bytes of the solvers' traffic).
report["allreduce_sum"] = comm.allreduce(float(r + 1))
report["allreduce_max"] = comm.allreduce(r, op="max")
report["allreduce_tensor"] = comm.allreduce(torch.tensor([1.0, r])).tolist()
report["bcast"] = comm.bcast({"from": r, "big": list(range(5000))} if r == P - 1 else None, root=P - 1)["from"]
gathered = comm.gather({"rank": r, "blob": "x" * (100_000 * r)})
comm.barrier()
if r == 0:
    report["gather"] = [g["rank"] for g in gathered]
    report["gather_sizes"] = [len(g["blob"]) for g in gathered]
all_reports = comm.gather(report)
if r == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(all_reports, f)
