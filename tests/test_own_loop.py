"""``ocnet.Training``: docs/own_loop.rst's loop of one's own, run as the page shows it under
``mpiexec -n 2``, computes what the command line computes with the same keys; its
checkpoints resume; bad keys are refused."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ocnet import Problem, Training
from ocnet.model.grid import TimeGrid
from ocnet.model.steps import Residual
from ocnet.runs import launcher
from ocnet.runs.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def page_script() -> str:
    """The code block captioned ``own_loop.py`` of docs/own_loop.rst."""
    text = (ROOT / "docs" / "own_loop.rst").read_text()
    block = re.search(r":caption: own_loop.py\n\n((?:    .*\n|\n)+)", text).group(1)
    return "\n".join(line[4:] for line in block.splitlines()).strip() + "\n"


@pytest.mark.mpi
def test_the_pages_loop_gives_the_command_lines_parameters(tmp_path):
    script = page_script()
    assert len(script.splitlines()) <= 40
    (tmp_path / "own_loop.py").write_text(script)
    mine = launcher.launch(2, [sys.executable, str(tmp_path / "own_loop.py"), str(tmp_path / "loop")], timeout=120,
                           env=ENV, cwd=tmp_path)
    assert mine.returncode == 0, mine.stderr
    said = sorted(line.split(":")[0] for line in mine.stdout.splitlines())  # two ranks print
    assert said == ["step 1", "step 2", "step 3", "test accuracy after 3 steps"], mine.stdout
    cli = launcher.launch(2, [sys.executable, "-m", "ocnet.run", "--solver", "mgrit", "--layers", "8", "--dtype",
                              "float64", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--max-steps", "3",
                              "--quiet", "--plots", "false", "--timeline-steps", "0", "--out", str(tmp_path / "cli")],
                          timeout=120, env=ENV, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    a, b = torch.load(tmp_path / "loop" / "model.pt"), torch.load(tmp_path / "cli" / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14, msg=k)
    assert any(not torch.equal(a[k], v) for k, v in Training(["--solver", "mgrit", "--layers", "8", "--dtype",
                                                              "float64"]).problem.state_dict().items())


def test_a_checkpoint_resumes_and_bad_keys_are_refused(tmp_path):
    def train(t: Training, epoch: int, steps: int) -> None:
        t.begin_epoch(epoch)
        for b, (x, y, index) in enumerate(t.batches(epoch)):
            if b == steps:
                return
            t.step(x, y, index)

    keys = dict(solver="penalty", layers=4, blocks=2, dtype="float64", batch_size=128)
    whole = Training(**keys)
    train(whole, 0, 4)
    cut = Training(**keys)
    train(cut, 0, 2)
    cut.save(tmp_path / "ck", epoch=0, batch=2)
    again = Training(**keys)
    assert again.resume(tmp_path / "ck") == (0, 2)  # inside epoch 0: its penalty states came with it
    for b, (x, y, index) in enumerate(again.batches(0)):
        if 2 <= b < 4:
            again.step(x, y, index)
    a, b = whole.model_state(), again.model_state()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-12, atol=1e-14, msg=k)
    assert whole.evaluate()[0] == again.evaluate()[0]
    # a network of one's own modules: u + h·tanh(W u), 4 steps on [0, 1]
    grid = TimeGrid(4, 1.0)
    mine = Problem(nn.Sequential(nn.Flatten(), nn.Linear(64, 16)),
                   [Residual(nn.Sequential(nn.Linear(16, 16), nn.Tanh()), grid.h) for _ in range(4)],
                   nn.Linear(16, 10), [grid], (1, 8, 8), 10).double()
    own = Training(dtype="float64", model=mine)
    before = own.evaluate()
    train(own, 0, 20)
    after = own.evaluate()
    assert own.problem is mine and after[1] < 0.8 * before[1] and after[0] > before[0], (before, after)
    with pytest.raises(ConfigError, match=r"the model given takes samples \(1, 8, 8\) into 10 classes; "
                                          r"peaks has \(2,\) and 5"):
        Training(problem="peaks", model=mine)
    with pytest.raises(ConfigError, match="unknown key 'layer'"):
        Training(layer=4)
    with pytest.raises(ConfigError, match="leave data_parallel at 1"):
        Training(data_parallel=2)
