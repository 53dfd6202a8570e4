"""Local parallelism: each block's gradient against autograd of the untruncated network, the
exactness anchor (full overlap, no auxiliary losses = the serial solver, bit for bit) on 1, 2
and 4 ranks, weights that do not depend on the rank count, the contract, the heads in the
checkpoint and the summary but not in the exported network, and bad input."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import run_mpi

from ocnet.model import kinds
from ocnet.ranks.comm import SelfComm
from ocnet.run import main
from ocnet.runs.testing import check_solver
from ocnet.solvers import Hybrid, Local, Serial

_spec = importlib.util.spec_from_file_location("local_grads", Path(__file__).parent / "mpi" / "local_grads.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

FLAGS = ["--quiet", "--plots", "none", "--timeline-steps", "0", "--layers", "4", "--epochs", "1",
         "--limit-batches", "3", "--dtype", "float64"]


@pytest.mark.parametrize("K, n, w", [(4, 0, 1.0), (4, 1, 0.5), (4, 2, 2.0), (3, 1, 0.0), (8, 3, 1.0)])
def test_each_block_gets_the_gradients_of_the_losses_within_reach(K, n, w):
    """Block b's gradient is Σ_{j=b}^{b+n} ∂L_j/∂θ_b of the whole network (autograd without any
    truncation), whatever the overlap; blocks out of every loss's reach get none."""
    x, y = ref.data()
    s = ref.solver(Local, ref.problem(), SelfComm(), local_blocks=K, local_overlap=n, local_aux_weight=w)
    s.step(x, y, torch.arange(len(y)))
    want = ref.reference(ref.problem(), K, n, w, x, y)
    scale = max(float(g.abs().max()) for g in want.values())
    for k, p in s.network.named_parameters():
        got = torch.zeros_like(p) if p.grad is None else p.grad
        assert float((got - want[k]).abs().max()) <= 1e-13 * scale, k
    if w == 0 and n < K - 1:  # the first blocks are out of the network loss's reach
        assert all(p.grad is None for p in s.network.opening.parameters())


def test_full_overlap_without_auxiliary_losses_is_serial():
    x, y = ref.data()
    a = ref.solver(Local, ref.problem(), SelfComm(), lr=1e-2, local_blocks=4, local_overlap=3, local_aux_weight=0.0)
    b = ref.solver(Serial, ref.problem(), SelfComm(), lr=1e-2)
    for step in range(3):
        rows = torch.arange(len(y)).roll(-4 * step)[:8]
        ra, rb = a.step(x[rows], y[rows], rows), b.step(x[rows], y[rows], rows)
        assert ra["loss"] == rb["loss"]
    for p, q in zip(a.network.parameters(), b.network.parameters()):
        assert torch.equal(p, q)


@pytest.mark.mpi
@pytest.mark.parametrize("P, K, n, w, filter", [(2, 4, 1, 0.5, "identity"), (3, 4, 2, 1.0, "downsample2"),
                                                (4, 4, 3, 0.0, "identity"), (2, 6, 5, 0.0, "downsample2")])
def test_gradients_and_exactness_on_ranks(tmp_path, P, K, n, w, filter):
    """On P ranks: the gradients against autograd (a filter at the rank boundaries included),
    and full overlap with weight 0 equal to the serial solver on the same cuts, bit for bit."""
    out = tmp_path / "r.json"
    proc = run_mpi(P, "local_grads.py", str(out), str(K), str(n), str(w), filter, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["grad_rel_err"] < 1e-13
    assert r["serial_max_diff"] == 0.0


def test_contract_on_one_process():
    check_solver(Local, local_blocks=3, local_overlap=1)
    check_solver(Local, exact=True, rtol=1e-13, local_blocks=4, local_overlap=3, local_aux_weight=0.0)


@pytest.mark.mpi
def test_contract_and_rank_invariance_on_two_and_three_ranks():
    """With the blocks fixed by local_blocks, the losses and weights on 2 and 3 ranks are one
    process's (check_solver's rank_invariant comparison)."""
    check_solver(Local, ranks=(2, 3), local_blocks=4, local_overlap=1, local_aux_weight=0.5)


def test_heads_are_in_the_checkpoint_and_resume_with_it():
    x, y = ref.data()
    a = ref.solver(Local, ref.problem(), SelfComm(), lr=1e-2, local_blocks=3)
    for _ in range(2):
        a.step(x, y, torch.arange(len(y)))
    state = a.state_dict()
    # a fresh copy of the classifier (pooling, flattening, linear) after blocks 0 and 1
    assert sorted(state["heads"]) == ["0.2.bias", "0.2.weight", "1.2.bias", "1.2.weight"]
    named = {k for s in state["optimizers"] for k in s}
    assert any(k.startswith("auxiliary.0.") for k in named) and not any(k.startswith("#") for k in named)
    b = ref.solver(Local, ref.problem(), SelfComm(), lr=1e-2, local_blocks=3)
    b.load_state_dict(state)
    for h, g in zip(a.heads.parameters(), b.heads.parameters()):
        assert torch.equal(h, g)
    assert a.step(x, y, torch.arange(len(y))) == b.step(x, y, torch.arange(len(y)))


def test_heads_are_reported_but_not_exported(tmp_path):
    out = tmp_path / "run"
    assert main([*FLAGS, "--solver", "local", "--local-blocks", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    heads = summary["auxiliary_heads"]
    assert [h["block"] for h in heads] == [0] and heads[0]["after_layer"] == 2
    assert heads[0]["parameters"] == 32 * 10 + 10 and 0.0 <= heads[0]["test_acc"] <= 1.0
    model = torch.load(out / "model.pt", weights_only=True)
    assert not any("aux" in k for k in model)  # the exported network is the problem's alone


def test_the_hybrid_wraps_it(tmp_path):
    out = tmp_path / "run"
    assert main([*FLAGS, "--solver", "hybrid", "--parallel", "local", "--parallel-epochs", "1",
                 "--serial-every", "2", "--epochs", "2", "--out", str(out)]) == 0
    phases = [json.loads(line).get("phase") for line in (out / "history.jsonl").read_text().splitlines()]
    assert {"serial", "parallel"} <= set(phases)
    assert issubclass(Local, Hybrid.partner("local"))


BAD_HEAD = """
import torch
from torch import nn
from ocnet import register_step

# a classifier that reads 8 features whatever the state: it fits the last stage only
register_step("narrow_head", lambda s: nn.Linear(s.stage_channels, s.stage_channels),
              opening=lambda s: nn.Sequential(nn.Flatten(), nn.Linear(64, s.stage_channels)),
              transition=lambda s, shape: nn.Linear(shape[0], s.stage_channels),
              classifier=lambda s, shape: nn.Linear(8, s.n_classes))
"""

NAN_HEAD = """
import torch
from torch import nn
from ocnet import register_step

class Nan(nn.Module):
    def __init__(self, c, n):
        super().__init__()
        self.linear = nn.Linear(c, n)
    def forward(self, u):
        return self.linear(u) * float("nan")

# stage 0's classifier (an auxiliary head only) gives nan logits
register_step("nan_head", lambda s: nn.Linear(s.stage_channels, s.stage_channels),
              opening=lambda s: nn.Sequential(nn.Flatten(), nn.Linear(64, s.stage_channels)),
              transition=lambda s, shape: nn.Linear(shape[0], s.stage_channels),
              classifier=lambda s, shape: (Nan if s.stage == 0 else nn.Linear)(shape[0], s.n_classes))
"""


@pytest.fixture
def kinds_kept():
    saved = dict(kinds.KINDS)
    yield
    kinds.KINDS.clear()
    kinds.KINDS.update(saved)


@pytest.mark.parametrize("argv, message", [
    (["--local-blocks", "2", "--local-overlap", "2"], "an overlap of 2 blocks needs more than 2 blocks"),
    (["--local-blocks", "5"], "5 blocks for 1 ranks and 4 layers"),
])
def test_bad_options_exit_2_before_training(tmp_path, capsys, argv, message):
    assert main([*FLAGS, "--solver", "local", *argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("ocnet: error:") == 1 and message in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("plugin, net, code, message", [
    (BAD_HEAD, "narrow_head", 2, "does not fit the state's shape"),  # before training
    (NAN_HEAD, "nan_head", 3, "aux_loss.0 is not finite"),  # as any non-finite value
])
def test_a_head_that_does_not_fit_or_diverges_stops_the_run(tmp_path, capsys, kinds_kept, plugin, net, code, message):
    (tmp_path / f"{net}.py").write_text(plugin)  # a module name of its own: plug-ins are imported once
    argv = [*FLAGS, "--plugin", str(tmp_path / f"{net}.py"), "--net", net, "--channels", "4,8",
            "--solver", "local", "--local-blocks", "4", "--out", str(tmp_path / "r")]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("ocnet: error:") == 1 and message in err
