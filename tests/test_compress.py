"""Compression of the gradient exchange between data groups (``--compress``): error feedback
conserves, the selection rules, message sizes and the byte counters, and on 2 and 4 ranks:
sending everything trains as without compression, P does not change the result, and a
resumed run continues bit for bit."""
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_mpi

from ocnet.model.options import ConfigError
from ocnet.ranks import compress
from ocnet.ranks.comm import SelfComm
from ocnet.ranks.compress import COMPRESSORS, INDEX_BYTES, AdaComp, Compressor, TopK, make, message_bytes
from ocnet.ranks.replicas import GradientAverage


def _dense(n: int, message) -> torch.Tensor:
    index, values = message
    out = torch.zeros(n, dtype=values.dtype)
    out[index.long()] = values
    return out


# -- one process -------------------------------------------------------------------------------
@pytest.mark.parametrize("compressor", [TopK(ratio=0.1), AdaComp(bin=7), AdaComp()])
def test_what_is_sent_plus_the_new_residue_is_the_old_residue_plus_the_gradient_exactly(compressor):
    gen = torch.Generator().manual_seed(3)
    residue = torch.zeros(300, dtype=torch.float64)
    sent_any = 0
    for _ in range(5):
        g = torch.randn(300, generator=gen, dtype=torch.float64)
        message = compressor.compress("layers.0.weight", g, (20, 15))
        assert message[0].dtype == torch.int32
        assert torch.equal(_dense(300, message) + compressor.residue["layers.0.weight"], residue + g)
        residue = compressor.residue["layers.0.weight"].clone()
        sent_any += message[0].numel()
    assert 0 < sent_any < 5 * 300


def test_top_k_sends_the_ceil_of_ratio_n_largest_residues():
    c = TopK(ratio=0.25)
    g = torch.tensor([0.1, -5.0, 0.25, 3.0, -0.3, 0.0, 1.0])  # k = ceil(1.75) = 2
    index, values = c.compress("w", g)
    assert index.tolist() == [1, 3] and values.tolist() == [-5.0, 3.0]
    # the residue keeps the rest and grows: 0.25 + 1.5 and 1 + 1 beat 0.1 and -0.3
    index, values = c.compress("w", torch.tensor([0.0, 0.0, 1.5, 0.0, 0.0, 0.0, 1.0]))
    assert index.tolist() == [2, 6] and values.tolist() == [1.75, 2.0]


def test_adacomp_sends_per_bin_what_reaches_the_bins_largest_residue():
    """Bins of 4: ``r = g``; send where ``|r + g| >= max_bin |r|`` (and ``r != 0``)."""
    c = AdaComp(bin=4)
    g = torch.tensor([1.0, -3.0, 0.5, 2.0, 0.0, 0.0, 0.0, 0.125, 0.0625])
    index, values = c.compress("w", g)
    # bin 1: max 3; |2|, |-6|, |1|, |4| → positions 1, 3.  bin 2: max 0.125, only 7 is non-zero.
    # bin 3 (one element, padded): sent
    assert index.tolist() == [1, 3, 7, 8] and values.tolist() == [-3.0, 2.0, 0.125, 0.0625]
    assert c.residue["w"].tolist() == [1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # step 2: r = (1 + 0.5, 0 + 0, 0.5 - 1, 0 + 0); max 1.5; |r + g| = 2, 0, 1.5, 0 → positions 0, 2
    index, values = c.compress("w", torch.tensor([0.5, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    assert index.tolist() == [0, 2] and values.tolist() == [1.5, -0.5]


def test_adacomps_default_bins_are_per_kind_of_tensor():
    assert AdaComp().bin_length((8, 4, 3, 3)) == 50 and AdaComp().bin_length((10, 20)) == 500
    assert AdaComp(bin=7).bin_length((8, 4, 3, 3)) == 7


def test_a_bin_of_one_sends_every_non_zero_residue_every_step():
    c = AdaComp(bin=1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        g = torch.randn(50, generator=gen)
        index, values = c.compress("w", g)
        assert index.tolist() == list(range(50)) and torch.equal(values, g)


def test_the_state_round_trips_and_the_compressor_continues_the_same():
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(40, generator=gen, dtype=torch.float64) for _ in range(4)]
    a = AdaComp(bin=5)
    for g in grads[:2]:
        a.compress("layers.3.weight", g)
    state = a.state_dict()
    assert state["name"] == "adacomp" and set(state["residue"]) == {"layers.3.weight"}
    b = AdaComp(bin=5)
    b.load_state_dict(torch.load(_saved(state), weights_only=True))
    for g in grads[2:]:
        ma, mb = a.compress("layers.3.weight", g), b.compress("layers.3.weight", g)
        assert torch.equal(ma[0], mb[0]) and torch.equal(ma[1], mb[1])
    with pytest.raises(ValueError, match="the state of compressor 'adacomp', not of 'topk'"):
        TopK().load_state_dict(state)


def _saved(state):
    import io
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_the_registry_takes_a_plug_in_and_none_keeps_the_dense_exchange():
    assert {"none", "topk", "adacomp"} <= set(COMPRESSORS)
    assert make("none") is None and isinstance(make("topk", 0.5), TopK)

    @compress.register_compressor("halves")
    class Halves(TopK):
        def __init__(self, ratio=0.01, bin=0):
            super().__init__(ratio=0.5, bin=bin)
    try:
        assert isinstance(make("halves"), Halves) and Halves.name == "halves"
    finally:
        del COMPRESSORS["halves"]
    with pytest.raises(ValueError, match="unknown compressor 'nope'"):
        make("nope")
    with pytest.raises(TypeError):
        compress.register_compressor("bad")(object)
    with pytest.raises(ValueError, match=r"ratio must lie in \(0, 1\]"):
        Compressor(ratio=0.0)


def test_the_gather_path_counts_the_bytes_of_its_messages():
    """Top-k of 10 % of a 10 × 3 weight (3 entries) and a bias of 3 (1 entry), float64: the
    message is the 4 positions and values, plus per tensor a count (int32) and a presence flag."""
    torch.manual_seed(0)
    net = torch.nn.Linear(10, 3).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    data = SelfComm()
    average = GradientAverage(net, [opt], data, TopK(ratio=0.1), exchange="gather")
    net(torch.randn(5, 10, dtype=torch.float64)).square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    opt.step()
    assert data.bytes_sent == message_bytes(4, 8) + 2 * INDEX_BYTES + 2 * 8 == 72
    assert average.take_sent() == {"matrix": message_bytes(3, 8) + 4 + 8, "vector": message_bytes(1, 8) + 4 + 8}
    assert message_bytes(4, 8) == 4 * (4 + 8)
    for p, g in zip(net.parameters(), grads):  # what was sent, where it was sent; zero elsewhere
        sent = p.grad.flatten() != 0
        assert int(sent.sum()) == math.ceil(0.1 * p.numel())
        assert torch.equal(p.grad.flatten()[sent], g.flatten()[sent])
        assert torch.equal(p.grad.flatten()[sent] + average.compressor.residue[_name(net, p)][sent],
                           g.flatten()[sent])


def test_auto_gathers_only_large_buffers_of_small_messages():
    """Below ``gather_from`` entries the dense allreduce is taken whatever the messages (the
    buffer of 33 entries and 4 flags in float64 here); above it, messages below
    ``gather_below`` of the dense buffer are gathered."""
    net = torch.nn.Linear(10, 3).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    data = SelfComm()
    average = GradientAverage(net, [opt], data, TopK(ratio=0.1))
    net(torch.randn(5, 10, dtype=torch.float64)).square().sum().backward()
    opt.step()
    assert data.bytes_sent == (33 + 2) * 8
    average.gather_from = 0
    for below, sent in ((0.2, 280), (0.5, 72)):  # the message of 4 entries: 72 bytes, 0.26 of 280
        average.gather_below = below
        before = data.bytes_sent
        net(torch.randn(5, 10, dtype=torch.float64)).square().sum().backward()
        opt.step()
        assert data.bytes_sent - before == sent, below
    with pytest.raises(ValueError, match="unknown exchange 'sparse'"):
        GradientAverage(net, [opt], data, TopK(), exchange="sparse")


def _name(net, p):
    return next(k for k, q in net.named_parameters() if q is p)


# -- the command line on 2 and 4 ranks ---------------------------------------------------------------
def _run(tmp_path: Path, name: str, *flags: str, n: int = 2):
    out = tmp_path / name
    args = ["ocnet.run", "--layers", "4", "--epochs", "2", "--batch-size", "128", "--dtype", "float64",
            "--quiet", "--timeline-steps", "0", "--data-parallel", "2", *flags]
    if "--resume" not in flags:
        args += ["--out", str(out)]
    proc = run_mpi(n, *args, module=True, plain=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _model(out: Path) -> dict:
    return torch.load(out / "model.pt", weights_only=True)


@pytest.mark.mpi
def test_sending_everything_trains_as_without_compression_bit_for_bit(tmp_path):
    plain = _model(_run(tmp_path, "none"))
    for name, flags in (("topk", ("--compress", "topk", "--compress-ratio", "1")),
                        ("adacomp", ("--compress", "adacomp", "--compress-bin", "1"))):
        got = _model(_run(tmp_path, name, *flags))
        assert got.keys() == plain.keys()
        for k in plain:
            assert torch.equal(got[k], plain[k]), (name, k)


@pytest.mark.mpi
@pytest.mark.parametrize("solver", [("--solver", "mgrit", "--mgrit-mode", "exact"),
                                    ("--solver", "penalty", "--blocks", "2")])
def test_other_solvers_stay_independent_of_p_with_compression_on(tmp_path, solver):
    """MGRIT and the penalty method on D = 2 groups of one and of two layer ranks, AdaComp
    gathered: the same network."""
    flags = (*solver, "--compress", "adacomp", "--compress-bin", "8", "--compress-exchange", "gather")
    two, four = _model(_run(tmp_path, "P2", *flags)), _model(_run(tmp_path, "P4", *flags, n=4))
    for k in two:
        torch.testing.assert_close(four[k], two[k], rtol=1e-8, atol=1e-12)


@pytest.mark.mpi
def test_compression_acts_per_tensor_so_p_does_not_change_the_result(tmp_path):
    """AdaComp at D = 2 with one layer rank per group (P = 2) and two (P = 4); and top-k's
    byte count on the gather path: per step and rank, its positions and values plus a count
    and a flag per tensor, as the formula says."""
    flags = ("--compress", "adacomp", "--compress-bin", "8", "--compress-exchange", "gather")
    two, four = _model(_run(tmp_path, "P2", *flags)), _model(_run(tmp_path, "P4", *flags, n=4))
    plain = _model(_run(tmp_path, "none"))
    assert any(not torch.equal(two[k], plain[k]) for k in plain)  # compression changed the training
    for k in two:
        torch.testing.assert_close(four[k], two[k], rtol=1e-10, atol=1e-14)
    out = _run(tmp_path, "topk", "--compress", "topk", "--compress-ratio", "0.05", "--compress-exchange", "gather")
    steps = sum(1 for line in (out / "history.jsonl").read_text().splitlines() if json.loads(line)["kind"] == "iter")
    shapes = [t.numel() for t in _model(out).values()]
    per_rank = message_bytes(sum(math.ceil(0.05 * n) for n in shapes), 8) + len(shapes) * (INDEX_BYTES + 8)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bytes_sent"] == steps * 2 * per_rank
    # by kind of tensor: the 2-D weights and the 1-D biases and scales, each at its own formula
    for kind, dims in (("matrix", (2,)), ("vector", (1,))):
        sizes = [t.numel() for t in _model(out).values() if t.dim() in dims]
        each = message_bytes(sum(math.ceil(0.05 * n) for n in sizes), 8) + len(sizes) * (INDEX_BYTES + 8)
        assert summary["exchange_bytes"][kind] == steps * 2 * each, kind
    records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    iters = [r for r in records if r["kind"] == "iter"]
    assert all(sum(r["exchange_bytes"].values()) == r["bytes_sent"] == 2 * per_rank for r in iters)


@pytest.mark.mpi
def test_a_bin_longer_than_every_tensor_is_refused_before_training(tmp_path):
    proc = run_mpi(2, "ocnet.run", "--layers", "4", "--data-parallel", "2", "--compress", "adacomp",
                   "--compress-bin", "100000", "--out", str(tmp_path / "bad"), module=True, plain=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("ocnet: error: --compress-bin 100000 is longer than the network's largest tensor") == 1
    assert not (tmp_path / "bad" / "history.jsonl").exists()


def test_residues_carry_over_summed_by_tensor_when_the_groups_change():
    """Two old groups' shards hold residues of the same tensor: the new first group takes
    their sum (what neither has sent), another group starts at zero; a tensor the rank does
    not hold is not taken."""
    net = torch.nn.Linear(2, 1).double()
    shards = [{"name": "topk", "residue": {"weight": torch.tensor([1.0, 2.0], dtype=torch.float64),
                                          "other": torch.ones(3, dtype=torch.float64)}},
              {"name": "topk", "residue": {"weight": torch.tensor([0.5, -2.0], dtype=torch.float64)}}]
    first = GradientAverage(net, [], SelfComm(), TopK())
    first.load_state_dict(shards)
    assert first.compressor.residue.keys() == {"weight"}
    assert torch.equal(first.compressor.residue["weight"], torch.tensor([1.5, 0.0], dtype=torch.float64))
    other = GradientAverage(net, [], SelfComm(), TopK())
    other.load_state_dict(shards, keep=False)
    assert other.compressor.residue == {}


@pytest.mark.mpi
def test_a_resumed_run_continues_bit_for_bit_with_the_compressors_residues(tmp_path):
    flags = ("--compress", "adacomp", "--compress-bin", "8")
    whole = _run(tmp_path, "whole", *flags)
    cut = _run(tmp_path, "cut", *flags, "--epochs", "1", "--checkpoint-every", "1")
    shard = torch.load(cut / "checkpoints" / "epoch_0000" / "group_001" / "rank_000.pt", weights_only=True)
    assert shard["state"]["compress"]["name"] == "adacomp"
    assert any(float(r.abs().max()) > 0 for r in shard["state"]["compress"]["residue"].values())
    _run(tmp_path, "cut", *flags, "--resume", str(cut))
    a, b = _model(whole), _model(cut)
    for k in a:
        assert torch.equal(b[k], a[k]), k


def test_compression_without_data_groups_is_refused_and_options_without_effect_are_warned():
    from ocnet.runs.config import resolve, without_effect

    with pytest.raises(ConfigError, match="--compress topk compresses the gradient exchange between data groups, "
                                          "and this run has one group: give --data-parallel D > 1"):
        resolve(["--compress", "topk"])

    def warned(*flags):
        return [line for line in without_effect(resolve(list(flags)), net="dense", image=False, device="cpu")
                if "compress" in line]
    assert warned("--compress-bin", "4") == ["--compress-bin has no effect with --compress none: it is AdaComp's "
                                             "bin length"]
    assert warned("--data-parallel", "2", "--compress", "adacomp", "--compress-ratio", "0.5") == \
        ["--compress-ratio has no effect with --compress adacomp: it is top-k's share"]
    assert warned("--data-parallel", "2", "--compress", "topk", "--compress-bin", "4") == \
        ["--compress-bin has no effect with --compress topk: it is AdaComp's bin length"]
    assert warned("--data-parallel", "2", "--compress", "adacomp", "--compress-bin", "4") == []


@pytest.mark.mpi
def test_allgather_gives_every_ranks_tensor_and_counts_what_each_rank_sent():
    proc = run_mpi(3, "allgather_bytes.py", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
