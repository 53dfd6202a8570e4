"""The transformer as a layer-time problem: the attention step against torch's encoder layer,
serial gradients against autograd, MGRIT's exactness and convergence on the attention step,
penalty's blocks, and the token data set."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import one_step, run_mpi

from ocnet import sweep
from ocnet.model.data import load, vocabulary
from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.model.steps import AttentionStep, Residual
from ocnet.ranks.comm import SelfComm
from ocnet.solvers import get

NETS = {  # a vision transformer on 8×8 images (2×2 patches: 17 tokens) and one on token ids
    "vit": dict(input_shape=(1, 8, 8), vocab=0),
    "tokens": dict(input_shape=(16,), vocab=8),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(name: str, layers: int = 6, seed: int = 1, **kwargs):
    spec = NETS[name]
    return build(spec["input_shape"], 5, net="transformer", layers=layers, width=8, heads=2, vocab=spec["vocab"],
                 seed=seed, dtype=torch.float64, **kwargs)


def _batch(name: str, n: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    spec = NETS[name]
    if spec["vocab"]:
        x = torch.randint(0, spec["vocab"], (n, *spec["input_shape"]), generator=gen).double()
    else:
        x = torch.randn(n, *spec["input_shape"], generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 5, (n,), generator=gen)


def test_step_with_unit_size_is_torchs_pre_norm_encoder_layer():
    """``X + 1·F(X)`` equals ``nn.TransformerEncoderLayer(norm_first=True)`` with the same weights."""
    torch.manual_seed(0)
    width, heads = 16, 4
    step = AttentionStep(width, heads).double()
    ref = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True).double()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(step.attention.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(step.attention.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(step.attention.out.weight)
        ref.self_attn.out_proj.bias.copy_(step.attention.out.bias)
        ref.linear1.load_state_dict(step.mlp[0].state_dict())
        ref.linear2.load_state_dict(step.mlp[2].state_dict())
        ref.norm1.load_state_dict(step.norm1.state_dict())
        ref.norm2.load_state_dict(step.norm2.state_dict())
    x = torch.randn(3, 7, width, dtype=torch.float64)
    torch.testing.assert_close(Residual(step, 1.0)(x), ref(x), rtol=1e-12, atol=1e-12)
    # a step of size h is X + h F(X): F is what the unit step adds
    h = 0.25
    torch.testing.assert_close(Residual(step, h)(x), x + h * (ref(x) - x), rtol=1e-12, atol=1e-12)


def test_heads_must_split_the_width():
    with pytest.raises(ValueError, match="does not split into 3 attention heads"):
        AttentionStep(8, 3)


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("micro_batches,schedule", [(1, "1f1b"), (3, "1f1b"), (4, "zb")])
def test_serial_gradients_equal_autograd_of_the_exported_module(name, micro_batches, schedule):
    problem = _problem(name)
    reference = problem.to_torch()
    x, y = _batch(name)
    loss = sweep.train(SelfComm(), problem.local(Partition(problem.n_layers, 1), 0), x, y, len(y),
                       micro_batches=micro_batches, schedule=schedule)
    ref_loss = torch.nn.functional.cross_entropy(reference(x), y)
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)
    for (key, p), q in zip(problem.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14, msg=key)


def test_step_size_is_final_time_over_layers_and_exported_outputs_match():
    problem = _problem("vit", layers=4, T=2.0)
    assert {layer.h for layer in problem.layers} == {0.5}
    x, _ = _batch("vit")
    torch.testing.assert_close(problem.to_torch()(x), problem(x), rtol=0, atol=0)
    assert problem.state_shapes[0] == (17, 8)


@pytest.mark.parametrize("name", NETS)
def test_mgrit_exact_mode_matches_serialone_step(name):
    x, y = _batch(name)
    serial, _ = one_step("serial", _problem(name, layers=16), x, y)
    mgrit, record = one_step("mgrit", _problem(name, layers=16), x, y, mgrit_tol=1e-12, coarsening=2,
                               mgrit_levels=3)
    err = max(float((mgrit[k] - serial[k]).abs().max() / serial[k].abs().max()) for k in serial)
    assert err < 1e-6
    assert record["residual"]["forward"][-1] <= record["tolerance"]["forward"]


@pytest.mark.parametrize("layers", [16, 32, 64])
def test_mgrit_converges_on_the_attention_step(layers):
    """Two levels, c = 4, FCF: every iteration contracts the residual (factor < 1), for the
    forward and the adjoint solve alike."""
    x, y = _batch("vit")
    _, record = one_step("mgrit", _problem("vit", layers=layers, T=1.0), x, y, mgrit_tol=1e-9)
    for phase in ("forward", "adjoint"):
        assert 0 < record["conv_factor"][phase] < 1, (phase, record["conv_factor"])
        assert record["residual"][phase][-1] <= record["tolerance"][phase]


@pytest.mark.parametrize("name", ["penalty", "al", "hybrid"])
def test_auxiliary_variable_solvers_train_the_transformer(name):
    """Two blocks on one rank: the loss falls as training goes."""
    problem = _problem("tokens", layers=4)
    solver = get(name)(problem.local(Partition(4, 1), 0), SelfComm(),
                       lambda p: torch.optim.Adam(p, lr=1e-2), blocks=2)
    x, y = _batch("tokens", n=32)
    solver.begin_epoch(0, x, y)
    records = [solver.step(x, y, torch.arange(32)) for _ in range(15)]
    assert records[-1]["loss"] < records[0]["loss"]


def test_sequences_data_set():
    data = load("sequences", seed=3)
    assert vocabulary("sequences") == 8 and vocabulary("digits") == 0
    assert data.input_shape == (16,) and not data.is_image and data.n_classes == 4
    x = data.x_train
    assert torch.equal(x, x.round()) and x.min() == 0 and x.max() == 7  # ids, not normalised
    expected = 2 * (x[:, 0] >= 4).long() + (x[:, -1] >= 4).long()
    assert torch.equal(data.y_train, expected)
    counts = torch.bincount(data.y_train, minlength=4).double() / len(data.y_train)
    assert counts.min() > 0.2
    assert torch.equal(load("sequences", seed=3).x_test, data.x_test)


@pytest.mark.mpi
def test_mgrit_on_two_ranks_equals_one(tmp_path):
    """Exact-mode MGRIT on the token transformer: P = 2 gives P = 1's loss and parameters."""
    runs = {}
    for ranks in (1, 2):
        out = tmp_path / f"p{ranks}"
        proc = run_mpi(ranks, "ocnet.run", "--problem", "sequences", "--layers", "8", "--width", "8",
                   "--heads", "2", "--epochs", "1", "--limit-batches", "3", "--solver", "mgrit", "--coarsening", "2",
                   "--mgrit-tol", "1e-12", "--dtype", "float64", "--quiet", "--out", str(out), module=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[ranks] = ([json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()],
                       torch.load(out / "model.pt"))
    (h1, m1), (h2, m2) = runs[1], runs[2]
    for a, b in zip(h1, h2):
        if "loss" in a:
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-9)
    for k in m1:
        torch.testing.assert_close(m2[k], m1[k], rtol=1e-8, atol=1e-12, msg=k)


@pytest.mark.mpi
def test_vision_transformer_on_mnist_format_files(tmp_path):
    """``--net transformer`` on IDX files: 28×28 images in 7×7 patches (16 tokens and the
    class token); the run trains and its exported model reproduces the solver's predictions."""
    from fixtures_data import write_mnist

    from ocnet import load_run
    write_mnist(tmp_path / "data")
    out = tmp_path / "run"
    proc = run_mpi(2, "ocnet.run", "--problem", "mnist", "--data-dir", str(tmp_path / "data"), "--net", "transformer",
                   "--layers", "2", "--width", "8", "--heads", "2", "--epochs", "2", "--batch-size", "4", "--quiet",
                   "--out", str(out), module=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = load_run(out)
    assert run.problem.state_shapes[0] == (17, 8)
    assert run.problem.opening.embed.embed.kernel_size == (7, 7)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(run.model(x), run.problem(x))


def test_synthetic_examples_fit_the_opening():
    """What calibration and the performance model feed a network: token ids below the
    vocabulary for a token transformer, real values for the others."""
    tokens = _problem("tokens").examples(64, torch.Generator().manual_seed(0))
    assert tokens.dtype == torch.float64 and tokens.shape == (64, 16)
    assert torch.equal(tokens, tokens.round()) and 0 <= tokens.min() and tokens.max() <= 7
    assert _problem("tokens")(tokens).shape == (64, 5)
    images = _problem("vit").examples(4)
    assert images.shape == (4, 1, 8, 8) and not torch.equal(images, images.round())
