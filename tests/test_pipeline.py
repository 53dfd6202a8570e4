"""Pipeline schedules: their properties as pure functions, and exact gradients under each."""
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
