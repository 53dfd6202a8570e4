"""Atomic writes and sharded checkpoints: the format, every kind of bad checkpoint, leftovers,
and resharding without MPI (the shards of P ranks written and read in one process)."""
import json
import os
import stat

import pytest
import torch

from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks.comm import SelfComm
from ocnet.runs import checkpoint, faults
from ocnet.runs.checkpoint import CheckpointError
from ocnet.solvers import get
from ocnet.solvers.serial import Serial


class Rank:
    """Rank ``rank`` of a job of ``size``: all that ``save`` and ``load`` ask of a communicator,
    so that one process can write and read the shards of several ranks."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def barrier(self):
        pass

    def allreduce(self, value, op="sum"):  # whether a rank failed to write: as if the others did not
        return value

    def bcast(self, obj, root=0):
        return obj


def _solvers(name, ranks, *, layers=8, width=4, dtype=torch.float64, seed=1, **options):
    """``name`` solvers on each rank of a ``ranks``-rank job, over one problem (only one rank
    can train: the others have no communicator)."""
    cls = get(name)
    problem = build((8,), 3, net="dense", layers=layers, width=width, seed=seed, dtype=dtype)
    config = {k: options.get(k, o.default) for k, o in cls.options_for(options).items()}
    partition = cls.partition(layers, ranks, config)
    return problem, [cls(problem.local(partition, r), SelfComm() if ranks == 1 else Rank(r, ranks),
                         lambda p: torch.optim.Adam(p, lr=0.1), **options) for r in range(ranks)]


def _save(run_dir, solvers, epoch=0, batch=None, meta=None):
    for solver in reversed(solvers):  # rank 0 last: it writes latest.json
        checkpoint.save(solver.comm, run_dir, epoch, {"solver": solver.state_dict()}, batch=batch, meta=meta,
                        partition=solver.network.partition)


def _restore(run_dir, solvers):
    return [checkpoint.restore(s.comm, run_dir, "cpu", s) for s in solvers]


def _adam_step(solvers, seed=0):
    """One Adam step of every rank with made-up gradients: optimiser state to move."""
    gen = torch.Generator().manual_seed(seed)
    for s in solvers:
        for p in s.network.parameters():
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        s.optimizer.step()


def _optimizer_states(solvers):
    names = {}
    for s in solvers:
        own = {id(p): s.network.problem_name(k) for k, p in s.network.named_parameters()}
        for p, st in s.optimizer.state.items():
            names[own[id(p)]] = st
    return names


# -- atomic files -----------------------------------------------------------------------------
def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    checkpoint.atomic_write(path, "old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        checkpoint.atomic_write(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]  # no temporary left behind


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_write_gives_the_mode_of_open(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        checkpoint.atomic_write(tmp_path / "f.txt", "x")
        with open(tmp_path / "g.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "g.txt").stat().st_mode) == mode


def test_the_fault_point_is_between_the_bytes_and_the_rename(tmp_path, monkeypatch):
    seen = []

    def inject(point, rank):
        shard = checkpoint.shard_path(tmp_path, 3, 0)
        tmps = list(shard.parent.glob(".rank_000.pt.*.tmp"))
        seen.append((point, rank, shard.exists(), [t.stat().st_size for t in tmps]))

    monkeypatch.setattr(faults, "inject", inject)
    checkpoint.save(SelfComm(), tmp_path, 3, {"x": torch.zeros(1000)})
    size = checkpoint.shard_path(tmp_path, 3, 0).stat().st_size
    assert seen == [("checkpoint", 0, False, [size])]


def test_an_injected_fault_leaves_the_last_complete_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("OCNET_FAULT", "checkpoint:0:raise:2")
    monkeypatch.setattr(faults, "_reached", {})
    checkpoint.save(SelfComm(), tmp_path, 0, {"x": 1})
    with pytest.raises(faults.InjectedFault):
        checkpoint.save(SelfComm(), tmp_path, 1, {"x": 2})
    assert checkpoint.latest(tmp_path)["epoch"] == 0
    assert os.listdir(checkpoint.checkpoint_dir(tmp_path, 1)) == []  # the temporary went with the error


# -- the format --------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    comm = SelfComm()
    state = {"solver": {"w": torch.arange(3.0), "opt": [{"step": 4}]}}
    checkpoint.save(comm, tmp_path, 2, state, meta={"step": 40}, partition=Partition(5, 1))
    info = {"format": "ocnet-checkpoint-1", "epoch": 2, "batch": None, "ranks": 1, "n_layers": 5, "starts": [0],
            "meta": {"step": 40}}
    assert checkpoint.latest(tmp_path) == info
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text()) == info
    loaded_info, loaded = checkpoint.load(comm, tmp_path, "cpu", Partition(5, 1))
    assert loaded_info == info
    assert torch.equal(loaded["solver"]["w"], state["solver"]["w"]) and loaded["solver"]["opt"] == [{"step": 4}]
    shard = torch.load(checkpoint.shard_path(tmp_path, 2, 0), weights_only=True)
    assert {k: v for k, v in shard.items() if k != "state"} == {
        "format": "ocnet-checkpoint-1", "rank": 0, "ranks": 1, "epoch": 2, "batch": None, "layers": [0, 5]}


def test_a_checkpoint_inside_an_epoch(tmp_path):
    _, solvers = _solvers("serial", 2)
    _save(tmp_path, solvers, epoch=4, batch=12, meta={"step": 40, "wall_time": float("nan")})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0004_batch_00012", "latest.json"]
    assert checkpoint.latest(tmp_path) == {"format": "ocnet-checkpoint-1", "epoch": 4, "batch": 12, "ranks": 2,
                                           "n_layers": 8, "starts": [0, 4], "meta": {"step": 40, "wall_time": None}}
    shard = torch.load(tmp_path / "checkpoints" / "epoch_0004_batch_00012" / "rank_001.pt", weights_only=True)
    assert (shard["rank"], shard["ranks"], shard["epoch"], shard["batch"], shard["layers"]) == (1, 2, 4, 12, [4, 8])


def test_load_refuses_code_in_a_checkpoint(tmp_path):
    comm = SelfComm()
    checkpoint.save(comm, tmp_path, 0, {"x": 1})
    path = checkpoint.shard_path(tmp_path, 0, 0)
    torch.save({"evil": os.system}, path)  # a shard that would run code when unpickled
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(comm, tmp_path, "cpu", Partition(4, 1))
    assert str(e.value) == (f"{path}: refused: it holds objects other than tensors and plain values "
                            "(weights_only loading)")


# -- bad checkpoints: one line that names the file ----------------------------------------------
def test_no_run_directory_and_no_checkpoint(tmp_path):
    missing = tmp_path / "nowhere"
    for call in (lambda: checkpoint.latest(missing),
                 lambda: checkpoint.load(SelfComm(), missing, "cpu", Partition(4, 1))):
        with pytest.raises(CheckpointError) as e:
            call()
        assert str(e.value) == f"{missing}: no such run directory"
    assert checkpoint.latest(tmp_path) is None
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(SelfComm(), tmp_path, "cpu", Partition(4, 1))
    assert str(e.value) == f"{tmp_path / 'checkpoints' / 'latest.json'}: missing: {tmp_path} has no complete checkpoint"


GOOD = {"format": "ocnet-checkpoint-1", "epoch": 0, "batch": None, "ranks": 1, "n_layers": 4, "starts": [0], "meta": {}}


@pytest.mark.parametrize("content,why", [
    (b"", "not a checkpoint marker (Expecting value: line 1 column 1 (char 0))"),
    (json.dumps(GOOD).encode()[:30],
     "not a checkpoint marker (Unterminated string starting at: line 1 column 12 (char 11))"),
    (bytes(range(256)) * 4, "not a checkpoint marker ('utf-8' codec can't decode byte 0x80 in position 128: "
                            "invalid start byte)"),
    (b"epoch = 3", "not a checkpoint marker (Expecting value: line 1 column 1 (char 0))"),
    (b"[1, 2]", "expected a JSON object, found list"),
    (b'{"epoch": 3, "ranks": 2}', "no 'format', 'batch', 'n_layers', 'starts', 'meta'"),
    (json.dumps({**GOOD, "format": "other"}).encode(), "format 'other', expected 'ocnet-checkpoint-1'"),
    (json.dumps({**GOOD, "epoch": "3"}).encode(), "'epoch' must be an integer >= 0, got '3'"),
    (json.dumps({**GOOD, "epoch": True}).encode(), "'epoch' must be an integer >= 0, got True"),
    (json.dumps({**GOOD, "batch": 1.5}).encode(), "'batch' must be null or an integer >= 0, got 1.5"),
    (json.dumps({**GOOD, "ranks": 0}).encode(), "'ranks' must be an integer >= 1, got 0"),
    (json.dumps({**GOOD, "meta": []}).encode(), "'meta' must be an object, got []"),
    (json.dumps({**GOOD, "starts": None}).encode(), "'n_layers' and 'starts' are both null or both given"),
    (json.dumps({**GOOD, "starts": "0"}).encode(),
     "'n_layers' must be an integer >= 1 and 'starts' a list of integers, got 4, '0'"),
    (json.dumps({**GOOD, "starts": [1]}).encode(), "starts (1,) do not cut 4 layers into 1 non-empty slices"),
    (json.dumps({**GOOD, "virtual": [2, "w"]}).encode(),
     "'virtual' must be [stages per rank >= 2, one of ['interleaved', 'v']], got [2, 'w']"),
    (json.dumps({**GOOD, "virtual": [2, "v"]}).encode(),
     "'ranks' is 1 but 'starts' gives the first layers of 1 virtual stages: the file is damaged"),
    (json.dumps({**GOOD, "virtual": [2, "v"], "starts": [0, 1]}).encode(),
     "'starts' [0, 1] are not the virtual stages of 4 layers: the file is damaged"),
])
def test_a_bad_latest_json(tmp_path, content, why):
    checkpoint.save(SelfComm(), tmp_path, 0, {"x": 1}, partition=Partition(4, 1))
    marker = tmp_path / "checkpoints" / "latest.json"
    marker.write_bytes(content)
    for call in (lambda: checkpoint.latest(tmp_path),
                 lambda: checkpoint.load(SelfComm(), tmp_path, "cpu", Partition(4, 1)),
                 lambda: checkpoint.remove_leftovers(tmp_path)):
        with pytest.raises(CheckpointError) as e:
            call()
        assert str(e.value) == f"{marker}: {why}"
    assert checkpoint.shard_path(tmp_path, 0, 0).exists()  # nothing removed on a marker it cannot read


def test_a_shard_records_each_chunk_of_a_partition_into_virtual_stages(tmp_path):
    """One rank of two chunks in a V: its shard names both slices and latest.json the layout;
    the same partition reads its own shard, a misplaced shard is named."""
    partition = Partition.virtual(6, 1, 2, "v")
    checkpoint.save(SelfComm(), tmp_path, 0, {"x": 1}, partition=partition)
    info = checkpoint.latest(tmp_path)
    assert (info["starts"], info["virtual"]) == ([0, 3], [2, "v"])
    shard = torch.load(checkpoint.shard_path(tmp_path, 0, 0), weights_only=True)
    assert shard["layers"] == [[0, 3], [3, 6]]
    assert checkpoint.load(SelfComm(), tmp_path, "cpu", partition)[1] == {"x": 1}
    assert checkpoint.load(SelfComm(), tmp_path, "cpu", Partition(6, 1))[1] == {"x": 1}  # read as another's
    shard["layers"] = [0, 6]
    torch.save(shard, checkpoint.shard_path(tmp_path, 0, 0))
    with pytest.raises(CheckpointError, match=r"a shard of layers \[0, 6\] where \[\[0, 3\], \[3, 6\]\] belongs"):
        checkpoint.load(SelfComm(), tmp_path, "cpu", partition)


def _two_ranks(tmp_path, epochs=1):
    _, solvers = _solvers("serial", 2)
    for epoch in range(epochs):
        _save(tmp_path, solvers, epoch=epoch)
    return solvers


@pytest.mark.parametrize("damage,why", [
    (lambda p, q: p.unlink(), "missing (the checkpoint is incomplete)"),
    (lambda p, q: p.write_bytes(b""), "empty"),
    (lambda p, q: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]),
     "truncated or corrupt (not a complete torch file)"),
    (lambda p, q: p.write_bytes(p.read_bytes()[:-1]), "truncated or corrupt (not a complete torch file)"),
    (lambda p, q: p.write_bytes(os.urandom(5000)), "truncated or corrupt (not a complete torch file)"),
    (lambda p, q: torch.save({"network": {}}, p), "not an ocnet checkpoint shard"),
    (lambda p, q: torch.save([1, 2], p), "not an ocnet checkpoint shard"),
    (lambda p, q: (p.write_bytes(q.read_bytes())),  # rank 1's shard in rank 0's place
     "a shard of rank 1 where 0 belongs (a swapped or misplaced shard?)"),
])
def test_a_bad_shard(tmp_path, damage, why):
    solvers = _two_ranks(tmp_path)
    path, other = checkpoint.shard_path(tmp_path, 0, 0), checkpoint.shard_path(tmp_path, 0, 1)
    damage(path, other)
    for ranks in (2, 1):  # the shard of its own rank, or all of them for another rank count
        with pytest.raises(CheckpointError) as e:
            checkpoint.load(Rank(0, ranks), tmp_path, "cpu", Partition(8, ranks))
        assert str(e.value) == f"{path}: {why}"
    with pytest.raises(CheckpointError) as e:
        checkpoint.restore(solvers[0].comm, tmp_path, "cpu", solvers[0])
    assert str(e.value) == f"{path}: {why}"


def test_a_shard_of_another_epoch_or_partition(tmp_path):
    _two_ranks(tmp_path, epochs=2)
    path = checkpoint.shard_path(tmp_path, 1, 1)
    path.write_bytes(checkpoint.shard_path(tmp_path, 0, 1).read_bytes())
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(Rank(1, 2), tmp_path, "cpu", Partition(8, 2))
    assert str(e.value) == f"{path}: a shard of epoch 0 where 1 belongs (a swapped or misplaced shard?)"
    # a shard of the same rank from a job cut elsewhere
    _, solvers = _solvers("serial", 2)
    shard = torch.load(checkpoint.shard_path(tmp_path, 1, 0), weights_only=True)
    torch.save({**shard, "layers": [0, 3]}, checkpoint.shard_path(tmp_path, 1, 0))
    with pytest.raises(CheckpointError) as e:
        checkpoint.restore(solvers[0].comm, tmp_path, "cpu", solvers[0])
    assert str(e.value) == (f"{checkpoint.shard_path(tmp_path, 1, 0)}: a shard of layers [0, 3] where [0, 4] belongs "
                            "(a swapped or misplaced shard?)")


@pytest.mark.parametrize("change,why", [
    ({"width": 5}, "network/opening.1.weight has shape (4, 8), this network's (5, 8) "
                   "(another --width, --channels or --layers?)"),
    ({"dtype": torch.float32}, "network/opening.1.weight is torch.float64, this network's torch.float32 "
                               "(another --dtype?)"),
])
def test_a_checkpoint_of_another_configuration(tmp_path, change, why):
    _, written = _solvers("serial", 2)
    _adam_step(written)
    _save(tmp_path, written)
    for ranks in (2, 1):
        _, solvers = _solvers("serial", ranks, **change)
        with pytest.raises(CheckpointError) as e:
            checkpoint.restore(solvers[0].comm, tmp_path, "cpu", solvers[0])
        assert str(e.value) == f"{checkpoint.shard_path(tmp_path, 0, 0)}: {why}"


def test_a_checkpoint_of_another_depth_or_net(tmp_path):
    _save(tmp_path, _solvers("serial", 2)[1])
    marker = tmp_path / "checkpoints" / "latest.json"
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(SelfComm(), tmp_path, "cpu", Partition(6, 1))
    assert str(e.value) == f"{marker}: the checkpoint holds a network of 8 layers, this job's has 6 (another --layers?)"
    problem = build((8,), 3, net="dense", layers=8, width=4, seed=1, dtype=torch.float64)
    problem.opening = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 4).double(), torch.nn.Tanh(),
                                          torch.nn.Linear(4, 4).double())
    other = Serial(problem.local(Partition(8, 1), 0), SelfComm(), lambda p: torch.optim.Adam(p))
    with pytest.raises(CheckpointError) as e:
        checkpoint.restore(other.comm, tmp_path, "cpu", other)
    assert str(e.value) == (f"{checkpoint.checkpoint_dir(tmp_path, 0)}: holds no network/opening.3.weight "
                            "(another network or solver?)")


# -- resharding in one process ------------------------------------------------------------------
def _perturbed(problem, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in problem.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.parametrize("P,Q", [(4, 2), (2, 3), (1, 4), (3, 3)])
def test_serial_state_moves_with_its_layers(tmp_path, P, Q):
    problem, written = _solvers("serial", P)
    _perturbed(problem, 3)
    _adam_step(written)
    _save(tmp_path, written, epoch=1, batch=2)
    again, solvers = _solvers("serial", Q)
    if P == Q:  # the same rank count cut elsewhere
        partition = Partition(8, Q, (0, 1, 2))
        solvers = [Serial(again.local(partition, r), Rank(r, Q), lambda p: torch.optim.Adam(p)) for r in range(Q)]
    infos = _restore(tmp_path, solvers)
    assert all(info["epoch"] == 1 and info["batch"] == 2 and info["ranks"] == P for info, _ in infos)
    for (k, a), b in zip(problem.named_parameters(), again.parameters()):
        assert torch.equal(a, b), k
    before, after = _optimizer_states(written), _optimizer_states(solvers)
    assert sorted(before) == sorted(after) and len(after) == len(list(problem.parameters()))
    for name, st in before.items():
        assert set(st) == set(after[name]) == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(st[k], after[name][k]) for k in st), name
    for s in solvers:
        assert s.optimizer.param_groups[0]["lr"] == 0.1


def test_penalty_states_move_with_their_boundaries(tmp_path):
    problem, written = _solvers("penalty", 4, blocks=4)
    _perturbed(problem, 4)
    _adam_step(written)
    index = torch.tensor([0, 3, 5])
    for s in written:
        s.rho, s._epoch0, s._initialized = 27.0, 1, True
        for b in s.owned:
            s.z.set(b, index, torch.full((3, 4), float(b), dtype=torch.float64))
            s.mu.set(b, index, torch.full((3, 4), -float(b), dtype=torch.float64))
    _save(tmp_path, written)
    again, solvers = _solvers("penalty", 2, blocks=4)
    _restore(tmp_path, solvers)
    assert [s.owned for s in solvers] == [[1], [2, 3]]
    for s in solvers:
        assert sorted(s.z) == sorted(s.mu) == s.owned
        for b in s.owned:
            assert torch.equal(s.z.rows[b], written[b].z.rows[b]) and torch.equal(s.mu.rows[b], written[b].mu.rows[b])
        assert (s.rho, s._epoch0, s._initialized) == (27.0, 1, True)
    assert all(torch.equal(a, b) for a, b in zip(problem.parameters(), again.parameters()))
    # one block per rank (blocks 0) makes the cut a function of the rank count: refused
    _, other = _solvers("penalty", 2)
    with pytest.raises(CheckpointError) as e:
        _restore(tmp_path, other)
    assert str(e.value) == (f"{checkpoint.checkpoint_dir(tmp_path, 0)}: does not fit this penalty solver: penalty: "
                            "the checkpoint cuts the network into 4 blocks, this job into 2: resume with --blocks 4 "
                            "on at most 4 ranks")


@pytest.mark.parametrize("warm", ["batch", "sample"])
def test_mgrit_warm_starts_move_with_their_points(tmp_path, warm):
    options = dict(coarsening=2, mgrit_mode="one_shot", mgrit_warm_start=warm)
    _, written = _solvers("mgrit", 2, **options)
    index = torch.tensor([1, 4])
    for s in written:
        for what, points in s.points.items():
            s.warm_start.remember(what, index, points, [torch.full((2, 4), 10.0 * n + (what == "lam"),
                                                                   dtype=torch.float64) for n in points])
    _save(tmp_path, written)
    _, solvers = _solvers("mgrit", 1, **options)
    _restore(tmp_path, solvers)
    (s,) = solvers
    assert s.points == {"u": range(0, 9), "lam": range(0, 9)}
    for what, points in s.points.items():
        guess = s.warm_start.guess(what, index, points)
        assert [float(g[0, 0]) for g in guess] == [10.0 * n + (what == "lam") for n in points]


def test_hybrid_shares_of_the_adaptive_rule(tmp_path):
    options = dict(parallel="penalty", blocks=4, switch="adaptive")
    _, written = _solvers("hybrid", 4, **options)
    for r, s in enumerate(written):
        s._steps, s._count, s._violation, s._factor, s._last_violation = 5, 5, 1.0 + r, 0.5 * r, 2.5
    _save(tmp_path, written, batch=5)
    for Q, violations in ((2, [3.0, 7.0]), (1, [10.0]), (4, [1.0, 2.0, 3.0, 4.0])):
        _, solvers = _solvers("hybrid", Q, **options)
        _restore(tmp_path, solvers)
        assert [s._violation for s in solvers] == violations
        assert max(s._factor for s in solvers) == 1.5
        assert all((s._steps, s._count, s._last_violation) == (5, 5, 2.5) for s in solvers)


class Frozen(Serial):
    """A plug-in that keeps a rank's count in its state without saying that it is global."""
    name = "frozen"

    def state_dict(self):
        return {**super().state_dict(), "count": torch.tensor(self.comm.rank)}


class Plain(Serial):
    """A plug-in that keeps the base class's state."""
    name = "plain"

    def step(self, x, y, index):
        return super().step(x, y, index)


def test_a_solver_that_cannot_reshard_says_so(tmp_path):
    problem = build((8,), 3, net="dense", layers=8, width=4, seed=1, dtype=torch.float64)
    written = [Frozen(problem.local(Partition(8, 2), r), Rank(r, 2), lambda p: torch.optim.Adam(p)) for r in range(2)]
    assert not written[0].reshardable() and Plain(problem.local(Partition(8, 1), 0), SelfComm(),
                                                  lambda p: torch.optim.Adam(p)).reshardable()
    _save(tmp_path, written)
    _restore(tmp_path, written)  # on its own partition it resumes
    one = Frozen(problem.local(Partition(8, 1), 0), SelfComm(), lambda p: torch.optim.Adam(p))
    with pytest.raises(CheckpointError) as e:
        checkpoint.restore(one.comm, tmp_path, "cpu", one)
    assert str(e.value) == (f"{checkpoint.checkpoint_dir(tmp_path, 0)}: solver 'frozen' cannot resume on another "
                            "rank count or partition (written by 2 ranks, this job has 1)")


def test_a_warm_start_without_global_state_cannot_reshard():
    from ocnet.solvers.mgrit import MGRIT
    from ocnet.solvers.warm_start import PreviousBatch

    class Mine(PreviousBatch):
        global_state = False

    class WithMine(MGRIT):
        def make_warm_start(self):
            return Mine()

    _, (s,) = _solvers("mgrit", 1, coarsening=2)
    assert s.reshardable()
    problem = build((8,), 3, net="dense", layers=8, width=4, seed=1, dtype=torch.float64)
    assert not WithMine(problem.local(Partition(8, 1), 0), SelfComm(), lambda p: torch.optim.Adam(p),
                        coarsening=2).reshardable()
    _, (h,) = _solvers("hybrid", 1, parallel="mgrit", coarsening=2)
    assert h.reshardable()


# -- leftovers --------------------------------------------------------------------------------
def test_remove_leftovers(tmp_path):
    comm = SelfComm()
    for epoch in (0, 1):
        checkpoint.save(comm, tmp_path, epoch, {"x": epoch}, partition=Partition(4, 1))
    ck = tmp_path / "checkpoints"
    made = [ck / "epoch_0001_batch_00003" / "rank_000.pt",  # before the complete one: kept
            ck / "epoch_0001" / "rank_001.pt",  # a rank the checkpoint does not have
            ck / "epoch_0002" / "rank_000.pt", ck / "epoch_0002" / ".rank_001.pt.1a2b.tmp",  # never completed
            ck / "epoch_0002_batch_00001" / "rank_000.pt",
            ck / "notes" / "mine.txt",  # not ocnet's
            ck / ".latest.json.77.tmp", tmp_path / ".history.jsonl.ab.tmp", tmp_path / "history.jsonl"]
    for p in made:
        p.parent.mkdir(exist_ok=True)
        p.write_text("x")
    removed = checkpoint.remove_leftovers(tmp_path)
    assert sorted(map(str, removed)) == sorted(map(str, [
        ck / "epoch_0002", ck / "epoch_0002_batch_00001", ck / "epoch_0001" / "rank_001.pt",
        ck / "epoch_0002" / ".rank_001.pt.1a2b.tmp", ck / ".latest.json.77.tmp", tmp_path / ".history.jsonl.ab.tmp"]))
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["checkpoints", "checkpoints/epoch_0000", "checkpoints/epoch_0000/rank_000.pt",
                    "checkpoints/epoch_0001", "checkpoints/epoch_0001/rank_000.pt",
                    "checkpoints/epoch_0001_batch_00003", "checkpoints/epoch_0001_batch_00003/rank_000.pt",
                    "checkpoints/latest.json", "checkpoints/notes", "checkpoints/notes/mine.txt", "history.jsonl"]
    assert checkpoint.load(comm, tmp_path, "cpu", Partition(4, 1))[1] == {"x": 1}
    # without latest.json no checkpoint is complete
    (ck / "latest.json").unlink()
    checkpoint.remove_leftovers(tmp_path)
    assert sorted(p.name for p in ck.iterdir()) == ["notes"]


def _plain(obj):
    return {k: v for k, v in vars(obj).items() if isinstance(v, (bool, int, float, str, type(None)))}


# -- complete at every step boundary ----------------------------------------------------------------
@pytest.mark.parametrize("name,options", [
    ("serial", {}),
    ("penalty", {"blocks": 3}),
    ("al", {"blocks": 3}),
    ("mgrit", {"coarsening": 2, "mgrit_mode": "one_shot"}),
    ("mgrit", {"coarsening": 2, "mgrit_mode": "one_shot", "mgrit_warm_start": "sample"}),
    ("hybrid", {"parallel": "al", "blocks": 3, "serial_every": 2, "switch": "adaptive", "serial_epochs": 1}),
])
def test_a_state_taken_inside_an_epoch_continues_it(name, options):
    """Three steps into an epoch: a twin restored from the state finishes the epoch and the
    next one as the original does (no begin_epoch for the epoch it resumes)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 8, generator=gen, dtype=torch.float64), torch.arange(40) % 3
    order = torch.randperm(40, generator=gen)

    def steps(solver, epoch, first, last):
        return [solver.step(x[i], y[i], i).get("loss") for i in order.roll(7 * epoch)[:40].split(8)[first:last]]

    problem, (solver,) = _solvers(name, 1, **options)
    solver.begin_epoch(0, x, y)
    steps(solver, 0, 0, 3)
    import io
    buf = io.BytesIO()
    torch.save(solver.state_dict(), buf)
    twin_problem, (twin,) = _solvers(name, 1, **options)
    twin.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for a, b in [(solver, twin)] + ([(solver.parallel, twin.parallel)] if name == "hybrid" else []):
        assert _plain(a) == _plain(b)  # counters, accumulators, schedules: nothing left behind
    runs = []
    for s in (solver, twin):
        losses = steps(s, 0, 3, 5)
        s.end_epoch(0)
        s.begin_epoch(1, x, y)
        runs.append(losses + steps(s, 1, 0, 5))
    assert runs[0] == runs[1] and None not in runs[0]
    for (k, a), b in zip(problem.named_parameters(), twin_problem.parameters()):
        assert torch.equal(a, b), k
