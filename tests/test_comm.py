"""comm.py: polite waiting under oversubscription, byte counters, the P = 1 stand-in."""
import json

import pytest
import torch

from ocnet.ranks.comm import Request, SelfComm
from ocnet.ranks.watchdog import Progress


@pytest.mark.mpi
def test_pipeline_of_compute_is_not_starved(mpi, tmp_path):
    """8 ranks on this machine's cores, each computing in turn: the seven that wait burn less CPU
    time than the chain computes (about a fifth of it here; spinning waits would share the cores
    with the computing rank and burn about four times its time). CPU seconds, not wall ones:
    other load on the machine slows the chain, but does not make a polite wait burn more."""
    out = tmp_path / "wait.json"
    proc = mpi(8, "pipeline_wait.py", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["waiting_cpu"] < r["compute_cpu"], r


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


@pytest.mark.mpi
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


def test_a_wait_says_what_it_waits_for_while_it_sleeps():
    """The watchdog's view: ``waiting`` is set once the wait stops spinning and sleeps,
    cleared when it completes; every completed wait and every ``where`` is a tick."""
    progress, seen = Progress(), []

    class Slow:  # an MPI request that completes at its 100th test
        polls = 0

        def Test(self):
            self.polls += 1
            seen.append(progress.waiting)
            return self.polls >= 100

    Request([Slow()], progress=progress, what=("recv", 1, 11)).wait()
    assert seen[0] is None and seen[-1] == ("recv", 1, 11)
    assert seen.count(None) == 50  # the spinning polls
    assert progress.waiting is None and progress.ticks == 1
    Request([], progress=progress, what=("send", 1, 11)).wait()
    assert progress.ticks == 2
    comm = SelfComm()
    comm.where("epoch 0, step 3")
    assert comm.progress.where == "epoch 0, step 3" and comm.progress.ticks == 1


def test_waits_add_up_their_time_by_kind():
    """``Progress.waited``: seconds in message waits and in collectives, apart."""
    import time as clock
    progress = Progress()

    class Late:  # an MPI request that completes 0.05 s after its first test
        start = None

        def Test(self):
            self.start = self.start or clock.perf_counter()
            return clock.perf_counter() - self.start >= 0.05

    Request([Late()], progress=progress, what=("recv", 1, 11)).wait()
    assert 0.05 <= progress.waited[0] < 0.5 and progress.waited[1] == 0.0
    Request([Late()], progress=progress, what=("allreduce",)).wait()
    assert 0.05 <= progress.waited[1] < 0.5 and progress.waited[0] < 0.5


def test_wait_any_ends_with_the_first_request_done_and_names_the_first():
    """``wait_any`` returns once any request completes (here the second, at its 100th poll,
    while the first never does); while it sleeps, the watchdog sees a wait for the first."""
    comm, seen = SelfComm(), []

    class Never:
        def Test(self):
            seen.append(comm.progress.waiting)
            return False

    class Slow:
        polls = 0

        def Test(self):
            self.polls += 1
            return self.polls >= 100

    first = Request([Never()], progress=comm.progress, what=("recv", 1, 2001))
    second = Request([Slow()], progress=comm.progress, what=("recv", 3, 2000))
    comm.wait_any([first, second])
    assert second.test() and not first.test()
    assert set(seen) == {None, ("recv", 1, 2001)} and comm.progress.waiting is None
