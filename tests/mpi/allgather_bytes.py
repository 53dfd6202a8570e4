"""Comm.allgather of tensors of different lengths per rank, on every rank; exits non-zero on
a mismatch.  Rank r sends r + 1 float64 values r, r, … and r int32 values (none on rank 0):
every rank receives every rank's, by rank, and counts only what it sent itself."""
import torch

from ocnet.ranks.comm import world

comm = world()
r = comm.rank
floats = comm.allgather(torch.full((r + 1,), float(r), dtype=torch.float64))
ints = comm.allgather(torch.arange(r, dtype=torch.int32))
assert [t.tolist() for t in floats] == [[float(k)] * (k + 1) for k in range(comm.size)], floats
assert [t.tolist() for t in ints] == [list(range(k)) for k in range(comm.size)], ints
assert all(t.dtype == torch.float64 for t in floats) and all(t.dtype == torch.int32 for t in ints)
assert comm.bytes_sent == (r + 1) * 8 + r * 4, comm.bytes_sent
