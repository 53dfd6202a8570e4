"""``--head convex``: the features are the input of the classifier's last linear map, the
fitted head on raw features predicts what its programs on standardised features predict, the
solvers agree on the objective, a run records and saves the head, and bad heads are refused
before training."""
import json

import pytest
import torch
from torch import nn

from ocnet import load_run
from ocnet.convex import head
from ocnet.model.problem import build
from ocnet.run import main
from ocnet.runs.job import EXIT_SETUP

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--problem", "peaks", "--layers", "4", "--width", "6", "--epochs", "2", "--quiet", "--plots", "none",
        "--timeline-steps", "0", "--head", "convex", "--convex-samples", "60", "--convex-patterns", "4"]


def test_the_features_are_the_input_of_the_classifiers_last_linear_map():
    problem = build((1, 8, 8), 3, net="conv", layers=2, channels=[4, 6])
    model = problem.to_torch().eval()
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = model[-1][:-1](model[:-1](x))  # pooling and flattening, before the linear map
    assert torch.equal(head.features(model, model[-1], x), pooled)
    torch.testing.assert_close(head.features(model, model[-1], x, batch=2), pooled)  # in batches
    linear = model[-1][-1]
    same = head.attach(model[-1], nn.Linear(6, 3))
    assert same is not model[-1] and model[-1][-1] is linear  # a copy: the trained classifier is kept
    assert head.attach(linear, nn.Identity()).__class__ is nn.Identity  # a classifier that is the map itself
    with pytest.raises(ValueError, match="no nn.Linear"):
        head.last_linear(nn.Sequential(nn.Flatten()))


def _features(n=45, d=3, classes=3):
    g = torch.Generator().manual_seed(4)
    labels = torch.arange(n) % classes
    centres = 2 * torch.randn(classes, d, dtype=torch.float64, generator=g)
    phi = 5 + 3 * (centres[labels] + torch.randn(n, d, dtype=torch.float64, generator=g))  # far from standard
    return phi, labels


def test_the_head_on_raw_features_predicts_what_its_programs_predict():
    """The programs are posed on standardised features and the standardisation is folded into
    the hidden layer: on the training features, output c is class c's program prediction
    ``Σ_i D_i Z (v_i − w_i)``, to the exact solver's accuracy."""
    phi, labels = _features()
    fit = head.fit(phi, labels, patterns=5, beta=0.05, solver="cvxpy", generator=torch.Generator().manual_seed(0))
    z = (phi - phi.mean(0)) / phi.std(0)
    z1 = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], dim=1)
    from ocnet.convex import sample_patterns
    s = sample_patterns(z1, 5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = fit.head(phi)
    for c, solution in enumerate(fit.solutions):
        predicted = ((z1 @ (solution.v - solution.w).T) * s).sum(dim=1)
        torch.testing.assert_close(out[:, c], predicted, rtol=1e-6, atol=1e-6 * float(predicted.abs().max()))
    assert fit.objective == pytest.approx(sum(sol.objective.total for sol in fit.solutions))


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_admm_and_cvxpy_heads_reach_the_same_objective(loss):
    phi, labels = _features(n=36, d=2)
    options = dict(patterns=4, beta=0.2, loss=loss)
    exact = head.fit(phi, labels, solver="cvxpy", generator=torch.Generator().manual_seed(1), **options)
    admm = head.fit(phi, labels, tol=1e-6, generator=torch.Generator().manual_seed(1), **options)
    assert all(s.status == "converged" for s in admm.solutions)
    assert admm.objective == pytest.approx(exact.objective, rel=1e-4)


@pytest.mark.parametrize("options,message", [
    (dict(patterns=0), "at least 1 activation pattern"),
    (dict(beta=-1.0), "β must be ≥ 0"),
    (dict(eps=-0.1), "ε must be ≥ 0"),
    (dict(solver="scs"), "unknown convex solver 'scs'"),
    (dict(solver="cvxpy", n=10_000), r"n·d·P = 400,000\) is too large: CVXPY takes at most 200,000"),
    (dict(eps=0.1, n=10_000), "the robust program is solved by CVXPY, which takes at most"),
    (dict(n=200_000, patterns=100), "would hold 29.8 GiB"),
])
def test_heads_that_cannot_be_fitted_are_refused(options, message):
    n = options.pop("n", 100)
    args = dict(patterns=4, beta=0.1, eps=0.0, solver="admm") | options
    with pytest.raises(ValueError, match=message):
        head.check(n, 9, 10, **args)
    assert head.admm_bytes(200_000, 9, 100, 10) == 8 * (2000 ** 2 + 10 * 10 * 2 * 200_000 * 100)


def test_a_run_scores_and_saves_its_convex_head(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--out", str(out), *TINY]) == 0
    assert "(convex head: test" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["convex_head"]
    assert entry["sgd_test_acc"] == pytest.approx(summary["final_test_acc"])
    assert entry["samples"] == 60 and entry["features"] == 6 and entry["status"] == "converged"
    assert entry["objective"] > 0 and entry["violation"] < 1e-3
    run = load_run(out)
    from ocnet.model.data import load
    data = load("peaks", None, 0)
    with torch.no_grad():
        got = (run.convex_model(data.x_test).argmax(1) == data.y_test).double().mean()
    assert float(got) == pytest.approx(entry["convex_test_acc"])
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(run.model(data.x_train), data.y_train)
    assert entry["sgd_train_loss"] == pytest.approx(float(loss), rel=1e-5)
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary file left behind


@pytest.mark.parametrize("flags,message", [
    (["--convex-patterns", "0"], "convex_patterns must be at least 1"),
    (["--convex-eps", "-0.5"], "convex_eps must be at least 0.0"),
    (["--convex-samples", "0", "--convex-solver", "cvxpy", "--convex-patterns", "200"], "too large: CVXPY"),
])
def test_bad_heads_stop_the_run_before_training(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["--out", str(out), *TINY, *flags]) == EXIT_SETUP
    err = capsys.readouterr().err
    assert err.startswith("ocnet: error:") and message in err and err.count("\n") == 1, err
    assert not (out / "history.jsonl").exists()


def test_convex_options_without_the_head_warn(tmp_path, capsys):
    flags = [f for f in TINY if f not in ("--head", "convex")]
    assert main(["--out", str(tmp_path / "run"), *flags, "--epochs", "1"]) == 0
    assert "--convex-patterns has no effect without --head convex" in capsys.readouterr().err


def test_a_head_that_does_not_converge_says_so(tmp_path, capsys, monkeypatch):
    from functools import partial

    from ocnet.runs import convex_head
    monkeypatch.setattr(convex_head.head, "fit", partial(head.fit, max_iter=3))
    out = tmp_path / "run"
    assert main(["--out", str(out), *TINY]) == 0
    assert "ADMM stopped at its iteration limit" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["convex_head"]["status"] == "max_iter"
