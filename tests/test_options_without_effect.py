"""Options that would change nothing: a learning rate the optimiser cannot apply in the run's
dtype is refused before training, a spatial filter on a network without image states is
refused, and options that have no effect on the run warn, one line each."""
import pytest

from ocnet.run import main
from ocnet.runs.config import ConfigError, check_filter, resolve, without_effect
from ocnet.runs.job import EXIT_SETUP

TINY = ["--layers", "4", "--width", "8", "--quiet", "--timeline-steps", "0", "--limit-batches", "2", "--epochs", "1"]


@pytest.mark.parametrize("flags,message", [
    (["--lr", "1e300"], "lr 1e+300 is too large for float32: Adam's first step is 10 × lr, beyond the largest "
                        "float32 number 3.403e+38; use an lr of at most 3.403e+37"),
    (["--lr", "3.5e37"], "lr 3.5e+37 is too large for float32"),  # finite in float32, its first step is not
    (["--lr", "3.5e38", "--optimizer", "sgd"], "lr 3.5e+38 is too large for float32: SGD steps by lr"),
    (["--lr", "1e308", "--dtype", "float64"], "lr 1e+308 is too large for float64"),
    (["--weight-decay", "1e39"], "weight_decay 1e+39 is beyond the largest float32 number 3.403e+38"),
])
def test_a_step_beyond_the_dtype_is_refused(flags, message):
    with pytest.raises(ConfigError) as e:
        resolve(flags)
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("flags", [["--lr", "3e37"], ["--lr", "3e38", "--optimizer", "sgd"],
                                   ["--lr", "1e300", "--dtype", "float64"]])
def test_a_step_within_the_dtype_is_accepted(flags):
    resolve(flags)  # a loss that then turns inf is the non-finite check's (exit 3)


def test_a_huge_learning_rate_stops_before_training_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--lr", "1e300", *TINY]) == EXIT_SETUP
    err = capsys.readouterr().err
    assert err.startswith("ocnet: error: lr 1e+300 is too large for float32") and err.count("\n") == 1, err
    assert not out.exists()


def test_a_spatial_filter_needs_image_states(tmp_path, capsys):
    check_filter("identity", "dense")
    check_filter("downsample2", "conv")
    for net in ("dense", "transformer"):
        with pytest.raises(ConfigError, match=f"filter downsample2 averages windows of image states, and a {net} "
                                              "network's states have none"):
            check_filter("downsample2", net)
    out = tmp_path / "run"
    assert main(["--out", str(out), "--filter", "downsample4", *TINY]) == EXIT_SETUP
    assert capsys.readouterr().err == (
        "ocnet: error: filter downsample4 averages windows of image states, and a dense network's states have "
        "none: it would send every state whole; use --filter identity (or --net conv on images)\n")
    assert not out.exists()


def _warnings(err):
    return [line for line in err.splitlines() if line.startswith("ocnet: warning:")]


def test_options_without_effect_warn_once_each(tmp_path, capsys):
    idle = tmp_path / "idle.py"
    idle.write_text("TIMEOUT = 3  # registers nothing\n")
    assert main(["--out", str(tmp_path / "run"), "--patch", "2", "--norm", "batch", "--epoch-test",
                 "--cuda-aware", "on", "--device", "cpu", "--plugin", str(idle), *TINY]) == 0
    assert _warnings(capsys.readouterr().err) == [
        "ocnet: warning: --patch has no effect: it is the patch size of a vision transformer (--net transformer "
        "on images), and this run trains a dense network",
        "ocnet: warning: --norm has no effect: it normalises the steps of a convolutional network, and this run "
        "trains a dense network",
        "ocnet: warning: --epoch-test has no effect without --val-split: without a validation set the test set "
        "is evaluated after every epoch anyway",
        "ocnet: warning: --cuda-aware on has no effect: this run computes on the CPU, so no GPU buffer crosses "
        "a rank boundary",
        f"ocnet: warning: --plugin {idle}: importing it registered no solver, data set or step kind",
    ]


def test_options_that_act_do_not_warn(tmp_path):
    """The same keys where they change the run, or left at their defaults."""
    def warned(flags, net, image, device="cpu"):
        return without_effect(resolve(flags), net=net, image=image, device=device)

    assert warned(["--patch", "2", "--net", "transformer"], "transformer", True) == []
    assert warned(["--patch", "2", "--problem", "sequences"], "transformer", False)[0].endswith(
        "and this run trains a transformer on token sequences")
    assert warned(["--norm", "batch", "--net", "conv"], "conv", True) == []
    assert warned(["--epoch-test", "--val-split", "0.2"], "dense", True) == []
    assert warned(["--epoch-test", "false"], "dense", True) == []
    assert warned(["--cuda-aware", "on"], "dense", True, device="cuda") == []
    assert warned([], "dense", True) == []  # defaults: nothing given, nothing to say
    assert warned(["--ahead", "2"], "dense", True) == []  # 1f1b, the default schedule, runs ahead
    assert warned(["--pipeline", "interleaved", "--virtual-stages", "3"], "dense", True) == []
    assert warned(["--pipeline", "v", "--ahead", "2"], "dense", True) == [
        "--ahead has no effect with --pipeline v: running forwards ahead is for the schedules of one slice of "
        "layers per rank (1f1b, zb)"]
    assert warned(["--pipeline", "zb", "--virtual-stages", "3"], "dense", True) == [
        "--virtual-stages has no effect with --pipeline zb: it is the stages per rank of --pipeline interleaved"]
    assert without_effect({**resolve(["--norm", "batch"])}, net="dense", image=True, device="cpu") == []  # a plain dict


def test_a_plugin_that_registers_a_solver_does_not_warn(tmp_path):
    mine = tmp_path / "mine_registers.py"
    mine.write_text("from ocnet import register\nfrom ocnet.solvers.serial import Serial\n\n"
                    "@register\nclass Mine(Serial):\n    name = 'test-mine-registers'\n")
    try:
        assert without_effect(resolve(["--plugin", str(mine)]), net="dense", image=True, device="cpu") == []
    finally:
        from ocnet.solvers import SOLVERS
        SOLVERS.pop("test-mine-registers", None)
