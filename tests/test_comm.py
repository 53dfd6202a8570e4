"""comm.py: polite waiting under oversubscription, byte counters, the P = 1 stand-in."""
import json

import pytest
import torch

from ocnet.comm import SelfComm


def test_pipeline_of_compute_is_not_starved(mpi, tmp_path):
    """8 ranks on this machine's cores: the chain takes at most 1.5 x its compute."""
    out = tmp_path / "wait.json"
    proc = mpi(8, "pipeline_wait.py", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["total"] <= 1.5 * r["compute"], r
    # and no rank's compute was slowed much by the waiting ones
    assert r["compute"] <= 1.5 * r["ranks"] * r["alone"], r


def test_self_comm_counts_bytes_and_round_trips():
    comm = SelfComm()
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    comm.isend(t, 0, tag=3).wait()
    comm.isend(t.float(), 0, tag=4).wait()
    assert comm.bytes_sent == 12 * 8 + 12 * 4
    assert torch.equal(comm.recv(0, tag=3), t)
    assert comm.recv(0, tag=4).dtype == torch.float32
    with pytest.raises(RuntimeError, match="never complete"):
        comm.recv(0, tag=3)
    assert comm.allreduce(2.5) == 2.5 and comm.gather("a") == ["a"] and comm.bcast(7) == 7


@pytest.mark.parametrize("ranks", [2, 3])
def test_operations_on_several_ranks(mpi, tmp_path, ranks):
    out = tmp_path / "ops.json"
    proc = mpi(ranks, "comm_ops.py", str(out), timeout=60)
    assert proc.returncode == 0, proc.stderr
    reports = json.loads(out.read_text())
    for rep in reports:
        assert rep["ring_ok"], rep
        # bytes counted are the payload bytes, exactly: 48 + 20 + 16 + 1 + 0 + 96
        assert rep["bytes"] == rep["bytes_expected"] == 181
        assert rep["allreduce_sum"] == ranks * (ranks + 1) / 2
        assert rep["allreduce_max"] == ranks - 1
        assert rep["allreduce_tensor"] == [ranks, sum(range(ranks))]
        assert rep["bcast"] == ranks - 1
    assert reports[0]["gather"] == list(range(ranks))
    assert reports[0]["gather_sizes"] == [100_000 * r for r in range(ranks)]
