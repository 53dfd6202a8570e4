"""Tests for ocnet.results.plot: loading run directories and drawing the figures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ocnet.results.plot import figures, load_run, load_runs, main, plot_runs
from ocnet.results.series import factor as _factor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(root: Path, name: str, solver: str = "serial", ranks: int = 4, epochs: int = 3,
              iters_per_epoch: int = 5, extra=None, summary: bool = True, n_layers: int = 8,
              torn: bool = False, bytes_per_iter: int = 1000) -> Path:
    """A synthetic run directory; ``extra(step)`` returns optional keys for an iter record."""
    d = root / name
    d.mkdir(parents=True)
    lines, step, t = [], 0, 0.0
    for e in range(epochs):  # counted from 0, as ocnet.run records them
        for _ in range(iters_per_epoch):
            step += 1
            t += 0.1
            rec = {"kind": "iter", "epoch": e, "step": step, "loss": 2.0 / step,
                   "wall_time": t, "bytes_sent": bytes_per_iter, "n_layers": n_layers}
            rec.update(extra(step) if extra else {})
            lines.append(json.dumps(rec))
        lines.append(json.dumps({"kind": "epoch", "epoch": e, "step": step, "loss": 2.0 / step,
                                 "wall_time": t, "bytes_sent": bytes_per_iter * iters_per_epoch,
                                 "train_acc": 0.5 + 0.1 * e, "test_acc": 0.4 + 0.1 * e,
                                 "test_loss": 1.0 / (e + 1), "lr": 0.1}))
    text = "\n".join(lines) + "\n"
    if torn:
        text += '{"kind": "iter", "epoch": 9, "st'
    (d / "history.jsonl").write_text(text)
    (d / "config.toml").write_text(f'solver = "{solver}"\nlayers = {n_layers}\n')
    if summary:
        (d / "summary.json").write_text(json.dumps({
            "solver": solver, "ranks": ranks, "problem": "digits", "epochs": epochs,
            "final_test_acc": 0.7, "final_train_acc": 0.8, "final_loss": 0.1,
            "wall_time": t, "bytes_sent": bytes_per_iter * step}))
    return d


def rewrite_history(d: Path, change) -> None:
    """Replace each record of ``d``'s history by ``change(record)``."""
    records = [json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()]
    (d / "history.jsonl").write_text("".join(json.dumps(change(r)) + "\n" for r in records))


def mgrit_extra(step: int) -> dict:
    rate = 0.1 + 0.01 * step
    res = [1.0 * rate ** k for k in range(5)]
    if step % 4 == 0:
        res[2] = float("nan")  # a NaN inside a residual history is skipped, not fatal
    return {"residual": {"forward": res, "adjoint": [r * 2 for r in res]},
            "conv_factor": {"forward": rate, "adjoint": None if step == 3 else rate}}


def penalty_extra(step: int) -> dict:
    return {"constraint_violation": 1.0 / step, "rho": 2.0 ** (step // 5),
            "mu_norm": 0.1 * step, "penalized_objective": 3.0 / step,
            "phase": "parallel" if step < 10 else "serial"}


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000  # a drawn figure, not an empty canvas


def test_load_run_counts_and_label(tmp_path):
    d = write_run(tmp_path, "a", epochs=3, iters_per_epoch=5)
    run = load_run(d)
    assert len(run.iters) == 15
    assert len(run.epochs) == 3
    assert run.summary["ranks"] == 4
    assert run.label == "serial P=4"
    assert run.n_layers == 8
    assert run.iters[-1]["step"] == 15


def test_torn_last_line_is_skipped(tmp_path):
    d = write_run(tmp_path, "torn", epochs=2, iters_per_epoch=4, torn=True, summary=False)
    run = load_run(d)
    assert (len(run.iters), len(run.epochs)) == (8, 2)
    assert run.summary == {}
    assert run.label == "serial"  # from config.toml; no ranks known without the summary
    paths = plot_runs([d])
    assert_png(d / "convergence.png")
    assert d / "convergence.png" in paths


def test_torn_middle_line_warns(tmp_path):
    d = write_run(tmp_path, "mid", epochs=1, iters_per_epoch=3)
    lines = (d / "history.jsonl").read_text().splitlines()
    lines.insert(1, '{"kind": "iter", "ep')
    (d / "history.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="line 2"):
        run = load_run(d)
    assert (len(run.iters), len(run.epochs)) == (3, 1)


def test_serial_run_draws_only_supported_figures(tmp_path):
    d = write_run(tmp_path, "serial", bytes_per_iter=0)
    paths = plot_runs([d])
    assert [p.name for p in paths] == ["convergence.png"]
    assert_png(d / "convergence.png")
    for name in ("mgrit_residuals.png", "mgrit_convergence.png", "constraints.png", "bytes.png"):
        assert not (d / name).exists(), name


def test_mgrit_run(tmp_path):
    d = write_run(tmp_path, "mgrit", solver="mgrit", extra=mgrit_extra)
    out = tmp_path / "out"
    paths = plot_runs([d], out)
    names = sorted(p.name for p in paths)
    assert names == ["bytes.png", "convergence.png", "mgrit_convergence.png",
                     "mgrit_residuals.png"]
    for p in paths:
        assert p.parent == out
        assert_png(p)
    assert not (d / "convergence.png").exists()


def test_residual_as_plain_list_and_factor_derived(tmp_path):
    # no conv_factor recorded: the factor is derived from the residual history
    d = write_run(tmp_path, "m", solver="mgrit",
                  extra=lambda s: {"residual": [1.0, 0.5, 0.25, None, 0.0625]})
    paths = plot_runs([d])
    assert {"mgrit_residuals.png", "mgrit_convergence.png"} <= {p.name for p in paths}
    for p in paths:
        assert_png(p)


def test_penalty_run(tmp_path):
    d = write_run(tmp_path, "pen", solver="penalty", extra=penalty_extra)
    paths = plot_runs([d])
    assert "constraints.png" in {p.name for p in paths}
    assert "mgrit_residuals.png" not in {p.name for p in paths}
    assert_png(d / "constraints.png")


def test_nan_and_none_values_are_skipped(tmp_path):
    def extra(step):
        return {"loss": float("nan") if step % 3 == 0 else None if step % 5 == 0 else 1.0 / step,
                "constraint_violation": None if step % 2 else 1e-3 * step}
    d = write_run(tmp_path, "nan", solver="al", extra=extra)
    paths = plot_runs([d])
    assert {"convergence.png", "constraints.png"} <= {p.name for p in paths}
    for p in paths:
        assert_png(p)


def test_comparison_of_several_runs(tmp_path, monkeypatch):
    runs = [write_run(tmp_path, "s", solver="serial", ranks=1, n_layers=8),
            write_run(tmp_path, "m8", solver="mgrit", extra=mgrit_extra, n_layers=8),
            write_run(tmp_path, "m16", solver="mgrit", extra=mgrit_extra, n_layers=16),
            write_run(tmp_path, "p", solver="penalty", extra=penalty_extra)]
    monkeypatch.chdir(tmp_path)
    paths = plot_runs(runs)
    names = {p.name for p in paths}
    assert names == {"comparison.png", "comparison_mgrit_residuals.png",
                     "comparison_mgrit_convergence.png", "comparison_constraints.png",
                     "comparison_bytes.png"}
    for p in paths:
        assert p.parent.resolve() == tmp_path.resolve()
        assert_png(p)
    # two "mgrit P=4" runs: the directory name tells them apart
    labels = [r.label for r in load_runs(runs)]
    assert labels == ["serial P=1", "mgrit P=4 (m8)", "mgrit P=4 (m16)", "penalty P=4"]


def test_main_writes_and_prints(tmp_path, capsys):
    a = write_run(tmp_path, "a", solver="serial")
    b = write_run(tmp_path, "b", solver="mgrit", extra=mgrit_extra)
    out = tmp_path / "cmp"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert str(out / "comparison.png") in printed
    for p in printed:
        assert_png(Path(p))
    assert main([str(a)]) == 0
    assert_png(a / "convergence.png")


def test_main_bad_dir_returns_2(tmp_path, capsys):
    good = write_run(tmp_path, "good")
    bad = tmp_path / "not_a_run"
    bad.mkdir()
    assert main([str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not_a_run" in err and "not a run directory" in err
    assert len(err.strip().splitlines()) == 1
    assert main([str(tmp_path / "missing")]) == 2
    assert not (good / "convergence.png").exists()  # nothing drawn before the check


def test_main_help_documents_output(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "comparison.png" in text and "--out" in text


def test_no_figure_leak(tmp_path):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    plot_runs([write_run(tmp_path, "a", extra=penalty_extra)])
    assert len(plt.get_fignums()) == before


def test_convergence_factor_derived_from_residual():
    # (r_K / r_0) ** (1 / K), counting skipped NaN/None entries in K
    assert _factor([1.0, 0.5, None, 0.125]) == pytest.approx(0.5)
    assert _factor([8.0, float("nan"), 2.0]) == pytest.approx(0.5)
    assert _factor([None, 1.0, 0.5]) is None and _factor([2.0]) is None and _factor(3.0) is None


def test_colliding_directory_names_use_the_path(tmp_path):
    a = write_run(tmp_path / "x", "run")
    b = write_run(tmp_path / "y", "run")
    labels = [r.label for r in load_runs([a, b])]
    assert labels == [f"serial P=4 ({a})", f"serial P=4 ({b})"]


def _lines(ax, label=None):
    return [ln for ln in ax.lines if label is None or ln.get_label() == label]


def test_figures_a_numerical_analyst_trusts(tmp_path):
    """Log axes for losses, residuals, factors and constraints (a first value of exactly 0
    marked below the axis), the tolerance drawn, serial phases shaded with no line across them, runs
    that coincide told apart by marker and line style, epoch means beside every step."""
    def hybrid(step):
        parallel = step <= 6 or step > 10  # steps 7-10 serial
        return {"phase": "parallel" if parallel else "serial",
                **({"constraint_violation": 0.0 if step == 1 else 1.0 / step} if parallel else {}),
                "residual": {"forward": [1.0, 0.1, 0.01]}, "tolerance": {"forward": 0.05},
                "conv_factor": {"forward": 0.1}}
    a = write_run(tmp_path, "a", solver="hybrid", extra=hybrid)
    b = write_run(tmp_path, "b", solver="hybrid", extra=hybrid)  # the same numbers
    figs = figures([a, b])
    conv = figs["convergence"].axes
    assert conv[0].get_yscale() == "log" and conv[1].get_yscale() == "log"
    assert conv[0].get_ylabel() == "last-block loss"  # what "loss" means for these solvers
    per_step, means = _lines(conv[0])[0], _lines(conv[0], "hybrid P=4 (a)")[0]
    assert len(per_step.get_xdata()) == 15 and list(means.get_xdata()) == [5, 10, 15]
    twins = _lines(conv[0], "hybrid P=4 (a)") + _lines(conv[0], "hybrid P=4 (b), same as hybrid P=4 (a)")
    assert twins[0].get_marker() != twins[1].get_marker() and twins[0].get_linestyle() != twins[1].get_linestyle()
    # one shaded span for steps 7-10, on the loss and on each constraint panel
    spans = [p for p in conv[0].patches]
    assert len(spans) == 1 and spans[0].get_label() == "serial phase"
    assert (spans[0].get_x(), spans[0].get_width()) == (6.5, 4.0)
    cons = figs["constraints"].axes[0]
    assert cons.get_yscale() == "log" and len(cons.patches) == 1
    line = _lines(cons, "hybrid P=4 (a)")[0]
    x, y = (np.asarray(v, float) for v in (line.get_xdata(), line.get_ydata()))
    assert x[0] == 2 and np.isnan(x).sum() == 1 and np.isnan(x[np.nonzero(np.isnan(x))[0][0] - 1]) == False  # noqa: E712
    assert x[np.nonzero(np.isnan(x))[0][0] + 1] == 11  # the line breaks over the serial steps
    assert list(_lines(cons, "hybrid P=4 (a): 0 (below the axis)")[0].get_xdata()) == [1]
    res = figs["mgrit_residuals"].axes[0]
    assert res.get_yscale() == "log" and _lines(res, "tolerance (median)")[0].get_ydata()[0] == 0.05
    factor = figs["mgrit_convergence"].axes[0]
    assert factor.get_yscale() == "log" and _lines(factor, "1: no convergence")
    # accuracy against cumulative bytes: 5000 bytes an epoch
    acc_bytes = _lines(conv[4], "hybrid P=4 (a): test")[0]
    assert list(acc_bytes.get_xdata()) == pytest.approx([0.005, 0.010, 0.015])
    assert "speedup" not in figs


def test_one_epoch_run_and_a_speedup_panel(tmp_path):
    one = figures([write_run(tmp_path, "one", epochs=1)])["convergence"].axes
    assert _lines(one[2])[0].get_marker() == "o" and len(_lines(one[2])[0].get_xdata()) == 1
    # serial at P = 1, 2 and 4: 0.5, 0.3 and 0.2 s an epoch
    runs = []
    for P, per_iter in ((1, 0.1), (2, 0.06), (4, 0.04)):
        d = write_run(tmp_path, f"p{P}", ranks=P)
        rewrite_history(d, lambda rec, per_iter=per_iter: {**rec, "wall_time": rec["step"] * per_iter})
        runs.append(d)
    ax = figures(runs)["speedup"].axes[0]
    line = _lines(ax, "serial")[0]
    assert list(line.get_xdata()) == [1, 2, 4]
    assert list(line.get_ydata()) == pytest.approx([1.0, 0.5 / 0.3, 0.5 / 0.2])
    assert ax.get_xscale() == "log"


def test_runs_on_data_groups_are_labelled_and_scaled_apart(tmp_path):
    """Serial at P = 2 and 4 in one group, and at P = 2 and 4 in 2 data groups: two speedup
    lines, and legends that say D."""
    runs = []
    for P, groups in ((2, 1), (4, 1), (2, 2), (4, 2)):
        d = write_run(tmp_path, f"p{P}d{groups}", ranks=P)
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**summary, "data_parallel": groups}))
        runs.append(d)
    figs = figures(runs)
    # the same times at D = 1 and 2, so the legend notes that the lines coincide
    assert {ln.get_label() for ln in _lines(figs["speedup"].axes[0])} >= {"serial", "serial D=2, same as serial"}
    labels = {ln.get_label() for ln in _lines(figs["convergence"].axes[0])}
    assert {"serial P=2", "serial P=4 D=2, same as serial P=2"} <= labels  # the same losses


def test_accuracy_control_figure(tmp_path):
    """The inexactness per step on a log axis with the control's tolerance, and the one-shot
    iterations as a staircase that rises where the control acted."""
    def controlled(step):
        return {"inexactness": 0.3 if step <= 5 else 0.01, "mgrit_iters": 1 if step <= 5 else 2,
                "residual": {"forward": [1.0, 0.1]}}
    d = write_run(tmp_path, "ctl", solver="mgrit", extra=controlled)
    (d / "config.toml").write_text('solver = "mgrit"\nlayers = 8\nmgrit_control = "iters"\nmgrit_control_tol = 0.05\n')
    plain = write_run(tmp_path, "plain", solver="serial")
    assert "mgrit_accuracy" not in figures([plain])
    inexact, iters = figures([d])["mgrit_accuracy"].axes
    assert inexact.get_yscale() == "log" and "inexactness" in inexact.get_ylabel()
    assert "iterations" in iters.get_ylabel()
    assert _lines(inexact, "mgrit P=4: tolerance 0.05")[0].get_ydata()[0] == 0.05
    line = _lines(iters)[0]
    assert line.get_drawstyle() == "steps-post"
    assert list(line.get_ydata()) == [1.0] * 5 + [2.0] * 10


# -- what a reader sees: labels, units, epoch numbers, ticks, legends ------------------------------
def _legend(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def _tick_labels(axis) -> list[str]:
    """The tick labels (major and minor) that ``axis`` shows within its view, in the order of
    their values; ticks left unlabelled are left out."""
    lo, hi = sorted(axis.get_view_interval())
    i = 0 if axis.axis_name == "x" else 1
    ticks = [(t.get_position()[i], t.get_text()) for t in axis.get_ticklabels(which="both")]
    return [text for v, text in sorted(ticks) if lo <= v <= hi and text]


def test_axis_labels_and_units_are_short_and_shared(tmp_path):
    """The loss axis says which loss in a few words; bytes are MB (the console's unit) on both
    figures that count them, cumulative on the convergence figure and per epoch on the other."""
    serial = write_run(tmp_path, "s", solver="serial")
    penalty = write_run(tmp_path, "p", solver="penalty", extra=penalty_extra)
    assert figures([serial])["convergence"].axes[0].get_ylabel() == "loss"
    assert figures([penalty])["convergence"].axes[0].get_ylabel() == "last-block loss"
    mixed = figures([serial, penalty])["convergence"].axes[0].get_ylabel()
    assert mixed.startswith("loss") and "last block" in mixed and len(mixed) <= 40, mixed
    figs = figures([serial])
    conv, sent = figs["convergence"].axes, figs["bytes"].axes[0]
    assert conv[4].get_xlabel() == "MB sent, cumulative (all ranks)"
    assert sent.get_ylabel() == "MB sent per epoch (all ranks)"
    # 1000 bytes a step, 5 steps an epoch: 0.005 MB an epoch, 0.005, 0.010, 0.015 MB by its end
    assert list(_lines(sent, "serial P=4")[0].get_ydata()) == pytest.approx([0.005] * 3)
    assert list(_lines(conv[4], "serial P=4: test")[0].get_xdata()) == pytest.approx([0.005, 0.010, 0.015])
    assert (conv[2].get_ylabel(), conv[3].get_ylabel()) == ("accuracy (%)", "test loss")


def test_epochs_count_from_1_in_every_figure(tmp_path):
    """Records count epochs from 0; every axis of epochs starts at 1, as the console's
    ``epoch 1/3`` does, on the convergence figure and on the bytes figure alike."""
    d = write_run(tmp_path, "e", epochs=3)
    assert [json.loads(x)["epoch"] for x in (d / "history.jsonl").read_text().splitlines()][-1] == 2
    figs = figures([d])
    conv, sent = figs["convergence"].axes, figs["bytes"].axes[0]
    for ax in (conv[2], conv[3], sent):
        assert ax.get_xlabel() == "epoch"
        for line in _lines(ax):
            assert list(line.get_xdata()) == [1, 2, 3], (ax.get_ylabel(), line.get_label())
    assert _lines(sent)  # the loop above saw a line on the bytes figure


def test_log_axes_of_less_than_a_decade_read_as_plain_numbers(tmp_path):
    """Loss from 0.8 to 0.4 (less than a decade): plain decimals on its ticks, several of them,
    and no 10^k notation; residuals over many decades keep the powers of ten."""
    d = write_run(tmp_path, "narrow", solver="mgrit", epochs=2, iters_per_epoch=5,
                  extra=lambda s: {"loss": 0.8 - 0.04 * s, "residual": [1.0, 1e-4, 1e-8]})
    figs = figures([d])
    loss = figs["convergence"].axes[0]
    assert loss.get_yscale() == "log"
    labels = _tick_labels(loss.yaxis)
    assert len(labels) >= 2, labels
    for text in labels:
        assert float(text) > 0 and "10^" not in text and "times" not in text, labels
    residual = _tick_labels(figs["mgrit_residuals"].axes[0].yaxis)
    assert residual and all("10^" in text for text in residual), residual


def test_every_curve_is_in_the_legend_and_says_what_it_is(tmp_path):
    """The thin per-step lines and the epoch-mean markers have legend entries; test and train
    accuracy, and test loss, say which they are."""
    figs = figures([write_run(tmp_path, "s")])
    conv = figs["convergence"].axes
    assert _legend(conv[0]) == ["serial P=4", "thin: each step", "markers: epoch mean"]
    assert _legend(conv[2]) == ["serial P=4: test", "serial P=4: train"]
    assert _legend(conv[3]) == ["serial P=4: test"]
    assert _legend(conv[4]) == _legend(conv[5]) == ["serial P=4: test"]


def test_coinciding_curves_are_noted_and_stay_visible(tmp_path):
    """Serial and exact MGRIT with the same numbers: the curve drawn on top says in the legend
    that it hides the other; markers differ in shape and are hollow. A run with other numbers
    gets no such note."""
    a = write_run(tmp_path, "a", solver="serial")
    b = write_run(tmp_path, "b", solver="mgrit")
    c = write_run(tmp_path, "c", solver="serial", ranks=2)
    rewrite_history(c, lambda rec: {**rec, "loss": 3.0 / rec["step"], **(
        {"test_acc": rec["test_acc"] / 2, "train_acc": rec["train_acc"] / 2} if rec["kind"] == "epoch" else {})})
    acc = figures([a, b, c])["convergence"].axes[2]
    assert _legend(acc) == ["serial P=4: test", "serial P=4: train",
                            "mgrit P=4: test, same as serial P=4", "mgrit P=4: train, same as serial P=4",
                            "serial P=2: test", "serial P=2: train"]
    loss = figures([a, b, c])["convergence"].axes[0]
    assert "mgrit P=4, same as serial P=4" in _legend(loss) and "serial P=2" in _legend(loss)
    first, second = _lines(acc, "serial P=4: test")[0], _lines(acc, "mgrit P=4: test, same as serial P=4")[0]
    assert first.get_marker() != second.get_marker()
    assert first.get_markerfacecolor() == second.get_markerfacecolor() == "none"


def test_rho_is_ticked_at_its_values(tmp_path):
    """ρ = 1, 3, 9 in three epochs: the ticks are 1, 3 and 9, not the decades around them."""
    d = write_run(tmp_path, "rho", solver="penalty", iters_per_epoch=5,
                  extra=lambda s: {"constraint_violation": 1.0 / s, "rho": 3.0 ** ((s - 1) // 5)})
    rho = figures([d])["constraints"].axes[1]
    assert rho.get_ylabel() == "penalty rho" and rho.get_yscale() == "log"
    assert list(rho.get_yticks()) == [1, 3, 9]
    assert _tick_labels(rho.yaxis) == ["1", "3", "9"]


def test_a_violation_of_zero_is_shown_and_said(tmp_path):
    """Zero in the first epoch: marked below the log axis, at those steps, with a legend entry
    that says 0; a run whose violation is 0 throughout draws it on a linear axis."""
    d = write_run(tmp_path, "zero", solver="penalty", iters_per_epoch=5,
                  extra=lambda s: {"constraint_violation": 0.0 if s <= 5 else 0.1 / s})
    ax = figures([d])["constraints"].axes[0]
    assert ax.get_yscale() == "log"
    zeros = _lines(ax, "penalty P=4: 0 (below the axis)")[0]
    assert list(zeros.get_xdata()) == [1, 2, 3, 4, 5] and list(zeros.get_ydata()) == [0] * 5
    assert zeros.get_transform() == ax.get_xaxis_transform()  # y in axes coordinates: the floor
    assert "penalty P=4: 0 (below the axis)" in _legend(ax)
    assert list(_lines(ax, "penalty P=4")[0].get_xdata()) == list(range(6, 16))
    flat = write_run(tmp_path, "flat", solver="penalty", extra=lambda s: {"constraint_violation": 0.0})
    ax = figures([flat])["constraints"].axes[0]
    assert ax.get_yscale() == "linear" and list(_lines(ax, "penalty P=4")[0].get_ydata()) == [0.0] * 15


def test_rank_counts_are_ticked_at_their_values(tmp_path):
    runs = [write_run(tmp_path, f"p{P}", ranks=P) for P in (1, 2, 4)]
    ax = figures(runs)["speedup"].axes[0]
    assert _tick_labels(ax.xaxis) == ["1", "2", "4"]
    assert "dotted: ideal" in _legend(ax)


def test_auxiliary_losses_and_staleness_have_figures_of_their_own(tmp_path):
    """Local parallelism's per-block losses: one curve per block beside the network's loss;
    AMP's staleness: the share of backwards at each staleness over the whole run."""
    local = write_run(tmp_path, "local", solver="local",
                      extra=lambda s: {"aux_loss": {"0": 3.0 / s, "1": 2.5 / s}})
    amp = write_run(tmp_path, "amp", solver="amp", extra=lambda s: {"staleness": {"0": 3, "1": 1 + s % 2}})
    figs = figures([local])
    assert "auxiliary_losses" in figs and "staleness" not in figs
    ax = figs["auxiliary_losses"].axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["block 0", "block 1", "network (last block)"]
    assert list(ax.get_lines()[1].get_ydata())[:2] == [2.5, 1.25]
    figs = figures([amp])
    assert "staleness" in figs and "auxiliary_losses" not in figs
    bars = figs["staleness"].axes[0].patches
    # 15 steps: staleness 0 in 45 backwards, staleness 1 in 7·1 + 8·2 = 23
    assert [round(b.get_height(), 6) for b in bars] == [round(45 / 68, 6), round(23 / 68, 6)]
