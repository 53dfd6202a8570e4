"""Pipeline schedules: their properties as pure functions, and exact gradients under each."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ocnet import sweep
from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks import pipeline, timeline
from ocnet.ranks.comm import SelfComm

sizes = st.integers(1, 6)
counts = st.integers(1, 12)


def _check(ops, micro_batches):
    """Every micro-batch has one F and one B, at most one W, and F < B < W."""
    kinds = {k: [m for kind, m in ops if kind == k] for k in "FBW"}
    assert sorted(kinds["F"]) == list(range(micro_batches))
    assert sorted(kinds["B"]) == list(range(micro_batches))
    assert len(set(kinds["W"])) == len(kinds["W"])
    where = {op: i for i, op in enumerate(ops)}
    for m in range(micro_batches):
        assert where[("F", m)] < where[("B", m)]
        if ("W", m) in where:
            assert where[("B", m)] < where[("W", m)]


@settings(max_examples=60, deadline=None)
@given(size=sizes, micro_batches=counts, name=st.sampled_from(sorted(pipeline.SCHEDULES)))
def test_schedules_are_complete_and_do_not_deadlock(size, micro_batches, name):
    schedules = [pipeline.SCHEDULES[name](r, size, micro_batches) for r in range(size)]
    for ops in schedules:
        _check(ops, micro_batches)
    # the ranks' lists played against each other finish (no rank waits for a pass that
    # never comes), and each rank's clock covers its own work
    finish = pipeline.simulate(schedules)
    for ops, t in zip(schedules, finish):
        assert t >= sum(1.0 for kind, _ in ops if kind == "F") - 1e-9
    # forwards go in micro-batch order on every rank, so messages match in order
    for ops in schedules:
        assert [m for kind, m in ops if kind == "F"] == list(range(micro_batches))


@settings(max_examples=40, deadline=None)
@given(size=st.integers(2, 6), micro_batches=counts)
def test_zero_bubble_is_never_slower_and_memory_is_bounded(size, micro_batches):
    """Under the cost model the zero-bubble schedule never takes longer than 1F1B; a rank
    holds at most one micro-batch more than under 1F1B, and on every rank but the last none."""
    base = [pipeline.one_f_one_b(r, size, micro_batches) for r in range(size)]
    zb = [pipeline.zero_bubble(r, size, micro_batches) for r in range(size)]
    assert max(pipeline.simulate(zb)) <= max(pipeline.simulate(base)) + 1e-9
    for r in range(size):
        assert pipeline.live(base[r]) == min(micro_batches, size - r)
        assert pipeline.live(zb[r]) <= pipeline.live(base[r]) + 1


def test_simulate_finds_a_deadlock():
    # rank 0 wants micro-batch 0's backward before rank 1 ever ran its forward
    with pytest.raises(RuntimeError, match="deadlock"):
        pipeline.simulate([[("F", 0), ("B", 0)], [("B", 0), ("F", 0)]])


def test_makespans_follow_the_formulas():
    """1F1B takes (m + P - 1)(F + B) when every pass costs the same on every rank; at P = 2,
    m = 8 the zero-bubble schedule splits two backwards, both on the last rank, and is shorter."""
    c = pipeline.COSTS
    for size, m in [(2, 8), (3, 5), (4, 4)]:
        base = [pipeline.one_f_one_b(r, size, m) for r in range(size)]
        assert max(pipeline.simulate(base)) == pytest.approx((m + size - 1) * (c.forward + c.backward))
    zb = [pipeline.zero_bubble(r, 2, 8) for r in range(2)]
    assert [sum(kind == "W" for kind, _ in ops) for ops in zb] == [0, 2]
    assert max(pipeline.simulate(zb)) < 9 * (c.forward + c.backward)


def _all_split(rank, size, micro_batches):
    """Every backward split, every W after all else: the deepest deferral there is."""
    return pipeline.one_f_one_b(rank, size, micro_batches) + [("W", m) for m in range(micro_batches)]


@pytest.mark.parametrize("micro_batches", [1, 3, 8])
def test_split_backward_equals_one_f_one_b(monkeypatch, micro_batches, device):
    """At P = 1 (opening and classifier on the one rank) split backwards give 1F1B's
    gradients, float64, to rounding; and the spans name each pass."""
    monkeypatch.setitem(pipeline.SCHEDULES, "split", _all_split)
    problem = build((3, 8, 8), 5, net="conv", layers=4, channels=[4, 8], seed=1, dtype=torch.float64).to(device)
    network = problem.local(Partition(problem.n_layers, 1), 0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, 8, 8, generator=gen, dtype=torch.float64).to(device)
    y = torch.randint(0, 5, (10,), generator=gen).to(device)
    grads, losses = {}, {}
    for name in ("1f1b", "split"):
        network.zero_grad(set_to_none=True)
        rec = timeline.Recorder()
        with timeline.recording(rec):
            losses[name] = sweep.train(SelfComm(), network, x, y, 10, micro_batches=micro_batches,
                                       schedule=name, device=device)
        grads[name] = {k: p.grad.clone() for k, p in network.named_parameters()}
        kinds = [kind for kind, *_ in rec.events]
        m = min(micro_batches, 10)
        assert kinds.count("forward_graph") == m and kinds.count("head") == 2 * m
        if name == "split":
            assert kinds.count("vjp") == m and kinds.count("weight_grad") == m and "backward" not in kinds
        else:
            assert kinds.count("backward") == m
        assert all(info["steps"] == len(network.layers) for kind, _, _, info in rec.events if kind != "head")
    assert losses["split"] == losses["1f1b"]
    for k in grads["1f1b"]:
        torch.testing.assert_close(grads["split"][k], grads["1f1b"][k], rtol=1e-12, atol=1e-15, msg=k)


def test_weight_pass_counts_nothing_twice(monkeypatch):
    """Each parametrised module's W runs its own nodes only: a hook on a layer's input sees
    the adjoint once per micro-batch (in B), never again in W."""
    monkeypatch.setitem(pipeline.SCHEDULES, "split", _all_split)
    problem = build((1, 8, 8), 5, net="dense", layers=3, width=8, seed=0, dtype=torch.float64)
    network = problem.local(Partition(3, 1), 0)
    seen = []

    def watch(module, args, out):
        args[0].register_hook(lambda g: seen.append(g.shape))

    network.layers[1].register_forward_hook(watch)
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.arange(6) % 5
    sweep.train(SelfComm(), network, x, y, 6, micro_batches=2, schedule="split")
    assert len(seen) == 2


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_schedules_give_the_same_gradients_on_many_ranks(mpi, tmp_path, ranks):
    """P = 2, 3; micro-batches 1, 3, 8; with and without a downsampling filter: every
    schedule gives 1F1B's gradients, and without a filter P = 1's (float64).  Running ahead
    (``ahead=2``, the last rank slowed) changes no bit, and the first rank, waiting for
    adjoints, holds exactly two micro-batches more than its schedule."""
    reference = {}
    for name in ("identity", "downsample2"):
        out = tmp_path / f"{name}.pt"
        proc = mpi(ranks, "pipeline_grads.py", str(out), name, "1,3,8", timeout=120)
        assert proc.returncode == 0, proc.stderr
        results = torch.load(out)
        if name == "identity":
            one = tmp_path / "one.pt"
            proc = mpi(1, "pipeline_grads.py", str(one), name, "1", timeout=120)
            assert proc.returncode == 0, proc.stderr
            reference = torch.load(one)[("1f1b", 1)]
        for (schedule, micro, *ahead), r in results.items():
            if ahead:  # run ahead while the last rank is slow: the same bits, within the cap
                base = results[(schedule, micro)]
                assert r["loss"] == base["loss"]
                for k, g in r["grads"].items():
                    assert torch.equal(g, base["grads"][k]), f"{k}: {schedule} run ahead, {name}"
                assert r["held"][0] == r["live"][0] + 2
                assert all(h <= q + 2 for h, q in zip(r["held"], r["live"]))
                assert r["held"][-1] == r["live"][-1]
                continue
            base = results[("1f1b", micro)]
            assert r["loss"] == pytest.approx(base["loss"], rel=1e-13)
            for k, g in r["grads"].items():
                torch.testing.assert_close(g, base["grads"][k], rtol=1e-12, atol=1e-15,
                                           msg=f"{k}: {schedule}, {micro} micro-batches, {name}")
                if name == "identity":
                    torch.testing.assert_close(g, reference["grads"][k], rtol=1e-10, atol=1e-13,
                                               msg=f"{k}: {schedule}, {micro} micro-batches vs P = 1")
            if schedule == "1f1b":  # memory: at most P - r micro-batches live on rank r
                assert r["live"] == [min(micro, ranks - q) for q in range(ranks)]


def test_a_parameter_outside_any_recorded_module_falls_back_to_a_whole_backward(monkeypatch):
    """A parameter whose module is never called (its owner reads it directly) has no
    recorded output to start a W from: the micro-batch runs one whole backward instead, and
    the gradients still equal 1F1B's."""
    monkeypatch.setitem(pipeline.SCHEDULES, "split", _all_split)
    problem = build((1, 8, 8), 5, net="dense", layers=2, width=8, seed=0, dtype=torch.float64)
    network = problem.local(Partition(2, 1), 0)
    holder = torch.nn.Module()
    holder.scale = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
    network.layers[1].add_module("holder", holder)
    inner = network.layers[1].F.forward
    network.layers[1].F.forward = lambda u: holder.scale * inner(u)
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.arange(6) % 5
    grads = {}
    for name in ("1f1b", "split"):
        network.zero_grad(set_to_none=True)
        rec = timeline.Recorder()
        with timeline.recording(rec):
            sweep.train(SelfComm(), network, x, y, 6, micro_batches=2, schedule=name)
        grads[name] = {k: p.grad.clone() for k, p in network.named_parameters()}
    assert "weight_grad" not in [kind for kind, *_ in rec.events]
    for k in grads["1f1b"]:
        torch.testing.assert_close(grads["split"][k], grads["1f1b"][k], rtol=1e-12, atol=1e-15, msg=k)


# -- schedules on virtual stages -----------------------------------------------------------
def _check_chunks(ops, micro_batches, chunks):
    """Every (micro-batch, chunk) has one F and one B, F before B, at most one W after its B;
    each chunk's forwards, backwards and W go in micro-batch order (messages match in order),
    and so do the passes that add into its parameter gradients, W and whole B together
    (they accumulate micro-batch 0, 1, … as under 1F1B)."""
    for kind in "FB":
        assert sorted((m, c) for k, m, c in ops if k == kind) == [
            (m, c) for m in range(micro_batches) for c in range(chunks)]
    deferred = {(m, c) for k, m, c in ops if k == "W"}
    for c in range(chunks):
        for kinds in ("F", "B", "W", "WB"):
            ms = [m for k, m, cc in ops if k in kinds and cc == c and (k, (m, c) in deferred) != ("B", True)]
            assert ms == sorted(set(ms)), (kinds, c)
    where = {op: i for i, op in enumerate(ops)}
    assert all(where[("F", m, c)] < where[("B", m, c)] for m in range(micro_batches) for c in range(chunks))
    assert all(where[("B", m, c)] < i for (k, m, c), i in where.items() if k == "W")


@settings(max_examples=80, deadline=None)
@given(size=sizes, micro_batches=counts, chunks=st.integers(1, 4))
def test_interleaved_is_complete_deadlock_free_and_bounded(size, micro_batches, chunks):
    """Interleaved 1F1B for any P, M (a multiple of P or not) and V: complete lists that
    play against each other; rank r holds at most 2(P - 1 - r) + (V - 1) P + 1 chunk
    activations (Megatron-LM's warm-up plus one), exactly that when P divides M; with one
    chunk it is 1F1B."""
    schedules = [pipeline.interleaved(r, size, micro_batches, chunks) for r in range(size)]
    for ops in schedules:
        _check_chunks(ops, micro_batches, chunks)
    pipeline.simulate(schedules)
    for r, ops in enumerate(schedules):
        bound = min(2 * (size - 1 - r) + (chunks - 1) * size + 1 if chunks > 1 else size - r,
                    micro_batches * chunks)
        assert pipeline.live(ops) <= bound
        if micro_batches % size == 0:
            assert pipeline.live(ops) == bound
        if chunks == 1:
            assert ops == [(kind, m, 0) for kind, m in pipeline.one_f_one_b(r, size, micro_batches)]


@settings(max_examples=60, deadline=None)
@given(size=sizes, micro_batches=counts)
def test_v_shape_is_complete_deadlock_free_and_bounded(size, micro_batches):
    """The V: complete lists, played on stages r and 2P - 1 - r; never slower than 1F1B, nor
    than the V with every backward split or none; at most 3P chunk activations on any rank
    with whole backwards, 4P with split ones."""
    schedules = [pipeline.v_shape(r, size, micro_batches) for r in range(size)]
    for ops in schedules:
        _check_chunks(ops, micro_batches, 2)
    span = max(pipeline.simulate(schedules, shape="v"))
    assert span <= max(pipeline.simulate([pipeline.one_f_one_b(r, size, micro_batches)
                                          for r in range(size)])) + 1e-9
    every = pipeline._all_backwards(size, micro_batches)
    assert span <= min(pipeline._v_lists(size, micro_batches, pipeline.COSTS, s)[0]
                       for s in (frozenset(), every)) + 1e-9
    for ops in schedules:
        split = any(k == "W" for k, *_ in ops)
        assert pipeline.live(ops) <= min((4 if split else 3) * size, 2 * micro_batches)


def test_the_v_splits_backwards_where_the_pipeline_idles():
    """The V splits the backwards whose deferred W fills idle time: with few micro-batches
    per rank nearly all (8 ranks, 8 micro-batches: a step of 25.01 forwards against 25.99
    with every backward split, 29.13 with none, 27.37 for interleaved 1F1B on two chunks
    and 35.70 for 1F1B), with more only a few while the pipeline drains (2 ranks,
    8 micro-batches: the last micro-batch on the last rank, 19.81 against 20.23 whole)."""
    c = pipeline.COSTS
    assert pipeline._v_lists(8, 8, c, pipeline._all_backwards(8, 8))[0] == pytest.approx(25.99, abs=0.005)
    assert pipeline._v_lists(8, 8, c, frozenset())[0] == pytest.approx(29.13, abs=0.005)
    v = [pipeline.v_shape(r, 8, 8) for r in range(8)]
    assert max(pipeline.simulate(v, shape="v")) == pytest.approx(25.01, abs=0.005)
    assert sum(k == "W" for ops in v for k, *_ in ops) > 100
    interleaved = [pipeline.interleaved(r, 8, 8, 2) for r in range(8)]
    assert max(pipeline.simulate(interleaved)) == pytest.approx(27.37, abs=0.005)
    one = [pipeline.one_f_one_b(r, 8, 8) for r in range(8)]
    assert max(pipeline.simulate(one)) == pytest.approx(15 * (c.forward + c.backward))
    two = [pipeline.v_shape(r, 2, 8) for r in range(2)]
    assert [sorted((m, k) for kind, m, k in ops if kind == "W") for ops in two] == [[], [(7, 0), (7, 1)]]
    assert max(pipeline.simulate(two, shape="v")) == pytest.approx(19.81, abs=0.005)
    assert pipeline._v_lists(2, 8, c, frozenset())[0] == pytest.approx(20.23, abs=0.005)


def test_interleaved_bubble_follows_the_formula():
    """With P | M, interleaved 1F1B on V chunks takes M (F + B) + (P - 1)(F + B) / V: the
    bubble is (P - 1) / (V M) of the ideal time (1F1B's over V).  The V with whole backwards
    matches V = 2 at P = 2 … 4, M = 2P, and the V splitting where it pays beats it; its first
    rank runs the first and the last stage."""
    c = pipeline.COSTS
    step = c.forward + c.backward
    for size, m, chunks in [(2, 4, 2), (4, 8, 2), (4, 8, 4), (3, 9, 3), (6, 12, 2)]:
        schedules = [pipeline.interleaved(r, size, m, chunks) for r in range(size)]
        assert max(pipeline.simulate(schedules)) == pytest.approx(m * step + (size - 1) * step / chunks)
    for size in (2, 3, 4):
        interleaved = 2 * size * step + (size - 1) * step / 2
        assert pipeline._v_lists(size, 2 * size, c, frozenset())[0] == pytest.approx(interleaved)
        v = [pipeline.v_shape(r, size, 2 * size) for r in range(size)]
        assert max(pipeline.simulate(v, shape="v")) < interleaved - 0.3
    assert Partition.virtual(8, 4, 2, "v").stages(0) == [0, 7]


def test_simulate_places_chunks_on_their_stages():
    """The V's lists play only on the V: at P = 2 rank 0 runs the last stage's backward of
    micro-batch 0 right after its forward, which dealt interleaved (stage 2, not 3) would
    wait for a backward of rank 1 that comes after rank 1's wait for rank 0."""
    v = [pipeline.v_shape(r, 2, 2) for r in range(2)]
    pipeline.simulate(v, shape="v")
    with pytest.raises(RuntimeError, match="deadlock"):
        pipeline.simulate(v, shape="interleaved")


def test_virtual_partition():
    """Stages r, r + P, … (interleaved) or r, 2P - 1 - r (V) of V·P balanced stages; bounds
    refuses, since a rank holds several slices; the local network names every layer by
    its global index and holds the opening and classifier where its chunks reach the ends."""
    grid = Partition.virtual(10, 2, 2)
    assert [grid.chunks(r) for r in range(2)] == [[(0, 3), (6, 8)], [(3, 6), (8, 10)]]
    assert grid.sizes() == [5, 5] and grid.owner(5) == 1 and grid.owner(6) == 0
    v = Partition.virtual(10, 2, 2, "v")
    assert [v.chunks(r) for r in range(2)] == [[(0, 3), (8, 10)], [(3, 6), (6, 8)]]
    with pytest.raises(ValueError, match="chunks"):
        v.bounds(0)
    with pytest.raises(ValueError, match="at least one layer"):
        Partition.virtual(5, 3, 2)
    with pytest.raises(ValueError, match="2 stages per rank"):
        Partition.virtual(9, 3, 3, "v")
    problem = build((3, 8, 8), 5, net="conv", layers=8, channels=[4, 8], seed=1)  # 9 layers
    first, second = (problem.local(Partition.virtual(9, 2, 2, "v"), r) for r in range(2))
    assert first.opening is not None and first.classifier is not None and second.classifier is None
    assert len(first.layers) == 3 + 2 and len(second.layers) == 4
    names = {first.problem_name(k) for k in first.state_dict()} | {second.problem_name(k) for k in second.state_dict()}
    assert names == set(problem.state_dict()) == set(first.problem_state()) | set(second.problem_state())
    assert first.problem_state()["layers.8.F.conv.weight"].data_ptr() == problem.layers[8].F.conv.weight.data_ptr()
    with pytest.raises(ValueError, match="chunk"):
        first(torch.zeros(1, 3, 8, 8))
    # a schedule of one slice per rank would run chunk 0 alone: refused, as the V on slices is
    x, y = torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)
    alone = problem.local(Partition.virtual(9, 1, 2), 0)
    with pytest.raises(ValueError, match="'1f1b' runs one slice of layers per rank"):
        sweep.train(SelfComm(), alone, x, y, 2, schedule="1f1b")
    with pytest.raises(ValueError, match="shape='v'"):
        sweep.train(SelfComm(), problem.local(Partition(9, 1), 0), x, y, 2, schedule="v")


@pytest.mark.parametrize("schedule,chunks", [("interleaved", 2), ("interleaved", 3), ("v", 2)])
def test_virtual_stages_equal_one_f_one_b_bitwise_on_one_rank(schedule, chunks, device):
    """P = 1, micro-batches 1, 3, 8: the schedules on virtual stages give 1F1B's loss and
    gradients bit for bit (float64): each layer's gradient is the same sum of micro-batches
    in the same order, and a cut between chunks hands the state and its adjoint over
    unchanged.  Each chunk's spans count its own layers."""
    problem = build((3, 8, 8), 5, net="conv", layers=6, channels=[4, 8], seed=1, dtype=torch.float64).to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, 8, 8, generator=gen, dtype=torch.float64).to(device)
    y = torch.randint(0, 5, (12,), generator=gen).to(device)
    shape = pipeline.VIRTUAL[schedule][0]
    for micro in (1, 3, 8):
        results = []
        for name, grid in (("1f1b", Partition(problem.n_layers, 1)),
                           (schedule, Partition.virtual(problem.n_layers, 1, chunks, shape))):
            network = problem.local(grid, 0)
            network.zero_grad(set_to_none=True)
            rec = timeline.Recorder()
            with timeline.recording(rec):
                loss = sweep.train(SelfComm(), network, x, y, 12, micro_batches=micro, schedule=name, device=device)
            results.append((loss, {network.problem_name(k): p.grad.clone() for k, p in network.named_parameters()}))
        steps = sorted(info["steps"] for kind, _, _, info in rec.events if kind == "forward_graph")
        assert steps == sorted([b - a for a, b in grid.chunks(0)] * micro)
        (loss0, g0), (loss1, g1) = results
        assert loss1 == loss0 and g1.keys() == g0.keys()
        for k in g0:
            assert torch.equal(g1[k], g0[k]), f"{k}: {schedule}, {micro} micro-batches"


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_virtual_stages_equal_serial_bitwise_on_many_ranks(mpi, tmp_path, ranks):
    """P = 2, 3; micro-batches 1, 3, 8: interleaved (2 chunks) and v give the loss and the
    gradients of 1F1B on P ranks and on one, bit for bit (float64).  With a downsampling
    filter, which acts at every stage boundary, they equal interleaved 1F1B of 2P chunks on
    one rank (the same cuts), bit for bit: the run is rank-invariant.  At each count the V
    splits some backwards into B and W and keeps others whole, and on 3 ranks (3 and 8
    micro-batches) a chunk's whole backward follows an earlier micro-batch's W: the split
    passes too give the bits of the whole backward, and the order of the sums is kept (on
    the CPU; not checked on a GPU)."""
    def whole_after_w(ops):
        w = {(m, c) for k, m, c in ops if k == "W"}
        return any(k == "B" and (n, c) not in w and n > m for m, c in w for k, n, cc in ops if cc == c)

    for micro in (1, 3, 8):
        lists = [pipeline.v_shape(r, ranks, micro) for r in range(ranks)]
        split = sum(k == "W" for ops in lists for k, *_ in ops)
        assert 0 < split < 2 * ranks * micro, micro  # of the 2P·m backwards
        assert any(map(whole_after_w, lists)) == (ranks == 3 and micro > 1), micro
    out = tmp_path / "stages.pt"
    proc = mpi(ranks, "pipeline_stages.py", str(out), "1,3,8", timeout=180)
    assert proc.returncode == 0, proc.stderr
    results = torch.load(out)
    assert len(results) == 3 * (2 + 2 + 1 + 2)
    for (schedule, name, micro), r in results.items():
        references = [results[("one", name, micro)]] + ([results[("1f1b", name, micro)]] if name == "identity" else [])
        for ref in references:
            assert r["loss"] == ref["loss"], (schedule, name, micro)
            assert r["grads"].keys() == ref["grads"].keys()
            for k, g in r["grads"].items():
                assert torch.equal(g, ref["grads"][k]), f"{k}: {schedule}, {name}, {micro} micro-batches"


@pytest.mark.mpi
def test_run_with_the_v_trains_as_one_f_one_b(mpi, tmp_path):
    """python -m ocnet.run: --pipeline v on 2 ranks (classifier and loss on rank 0), its
    checkpoint of the first epoch resumed on 1 rank for the second, ends with the parameters
    of 1f1b on 2 ranks, bit for bit, and the same accuracy and loss."""
    models, summaries = {}, {}
    for schedule in ("1f1b", "v"):
        out = tmp_path / schedule
        flags = ["--layers", "4", "--quiet", "--micro_batches", "4", "--pipeline", schedule, "--epochs", "2"]
        if schedule == "v":  # each rank's shard records its two chunks
            proc = mpi(2, "ocnet.run", "--out", str(out), *flags[:-1], "1", "--checkpoint_every", "1",
                       module=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            assert json.loads((out / "checkpoints" / "latest.json").read_text())["virtual"] == [2, "v"]
            proc = mpi(1, "ocnet.run", "--resume", str(out), *flags, module=True, timeout=120)
        else:
            proc = mpi(2, "ocnet.run", "--out", str(out), *flags, module=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        models[schedule] = torch.load(out / "model.pt", weights_only=True)
        summaries[schedule] = json.loads((out / "summary.json").read_text())
    assert models["v"].keys() == models["1f1b"].keys()
    for k, p in models["1f1b"].items():
        assert torch.equal(models["v"][k], p), k
    for key in ("final_test_acc", "final_train_acc", "final_loss"):
        assert summaries["v"][key] == summaries["1f1b"][key], key


@pytest.mark.parametrize("args,message", [
    (["--layers", "1", "--pipeline", "interleaved"], "2 stages per rank on 1 ranks need at least 2 layers"),
    (["--solver", "hybrid", "--pipeline", "interleaved"], "only --solver serial"),
    (["--solver", "mgopt", "--pipeline", "v"], "serial only, not inside mgopt"),
    (["--pipeline", "v", "--virtual_stages", "3"], "2 stages per rank"),
])
def test_bad_combinations_are_refused(tmp_path, capsys, args, message):
    """Too few layers for the stages, another solver than serial, a V of other than two
    chunks: exit 2 with one line that says why."""
    from ocnet.run import main
    base = ["--out", str(tmp_path / "run"), "--epochs", "1", "--quiet", "--plots", "none"]
    assert main(base + (["--layers", "4"] if "--layers" not in args else []) + args) == 2
    assert message in capsys.readouterr().err
