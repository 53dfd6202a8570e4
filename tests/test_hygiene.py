"""Research hygiene: a validation set held out of the training set, the best epoch's model
kept and scored on the test set once, and smoke runs cut short by steps or batches."""
import json

import pytest
import torch

import ocnet
from ocnet.model.data import DataError, load
from ocnet.run import main

TINY = ["--layers", "4", "--quiet", "--timeline-steps", "0"]


def _records(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def test_validation_samples_are_held_out_of_the_training_set():
    whole, split = load("digits", None, 0), load("digits", None, 0, val_split=0.2)
    assert len(split.y_val) == round(0.2 * 1437) and len(split.y_train) + len(split.y_val) == 1437
    assert torch.equal(split.y_test, whole.y_test)
    # the same samples: labels as a multiset, and rows of one shape
    assert torch.equal(torch.cat([split.y_train, split.y_val]).sort().values, whole.y_train.sort().values)
    assert torch.cat([split.x_train, split.x_val]).shape == whole.x_train.shape
    # statistics from what is left for training: mean 0 there, not on the held-out rows
    assert float(split.x_train.mean()) == pytest.approx(0.0, abs=1e-5)
    assert not torch.equal(load("digits", None, 1, val_split=0.2).y_val, split.y_val)  # chosen by the seed
    assert torch.equal(load("digits", None, 0, val_split=0.2).y_val, split.y_val)
    with pytest.raises(DataError, match="leaves no validation sample"):
        load("digits", None, 0, val_split=1e-4)


def test_a_run_with_validation_keeps_its_best_epoch_and_tests_once(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "4", "--lr", "0.03", "--val-split", "0.2", "--out", str(out)]) == 0
    epochs = [r for r in _records(out) if r["kind"] == "epoch"]
    assert all("val_acc" in r and "test_acc" not in r for r in epochs)
    summary = json.loads((out / "summary.json").read_text())
    best = max(epochs, key=lambda r: r["val_acc"])
    assert (summary["best_epoch"], summary["best_val_acc"]) == (best["epoch"], best["val_acc"])
    data = load("digits", None, 0, val_split=0.2)
    run = ocnet.load_run(out)
    assert _accuracy(run.model, data.x_test, data.y_test) == pytest.approx(summary["final_test_acc"], abs=1e-12)
    assert _accuracy(run.model, data.x_val, data.y_val) == pytest.approx(epochs[-1]["val_acc"], abs=1e-12)
    run.problem.load_state_dict(torch.load(out / "best.pt", weights_only=True))
    model = run.problem.to_torch().eval()
    assert _accuracy(model, data.x_val, data.y_val) == pytest.approx(best["val_acc"], abs=1e-12)
    assert _accuracy(model, data.x_test, data.y_test) == pytest.approx(summary["best_test_acc"], abs=1e-12)
    # --epoch-test scores the test set after every epoch too
    again = tmp_path / "again"
    assert main([*TINY, "--epochs", "2", "--val-split", "0.2", "--epoch-test", "--out", str(again)]) == 0
    assert all("val_acc" in r and "test_acc" in r for r in _records(again) if r["kind"] == "epoch")


@pytest.mark.mpi
def test_validation_on_two_ranks_resumes(mpi, tmp_path):
    out = tmp_path / "run"
    flags = [*TINY, "--val-split", "0.2", "--checkpoint-every", "1"]
    for extra in (["--epochs", "2", "--out", str(out)], ["--epochs", "3", "--resume", str(out)]):
        proc = mpi(2, "ocnet.run", *flags, *extra, module=True, plain=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    epochs = [r for r in _records(out) if r["kind"] == "epoch"]
    assert summary["epochs"] == 3 and summary["best_val_acc"] == max(r["val_acc"] for r in epochs)
    assert "best epoch" in proc.stdout and (out / "best.pt").is_file()


@pytest.mark.parametrize("flags,iters,epochs", [(["--limit-batches", "5", "--epochs", "2"], 10, [0, 1]),
                                                (["--max-steps", "7", "--epochs", "3"], 7, [0]),
                                                (["--max-steps", "30", "--epochs", "3"], 30, [0, 1])])
def test_smoke_runs_stop_early(tmp_path, flags, iters, epochs):
    out = tmp_path / "run"
    assert main([*TINY, *flags, "--checkpoint-every", "1", "--out", str(out)]) == 0
    records = _records(out)
    assert [r["step"] for r in records if r["kind"] == "iter"] == list(range(1, iters + 1))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == epochs
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["epochs"]) == (iters, len(epochs))
    # an epoch that a step limit cut short gets no end-of-epoch checkpoint
    complete = [e for e in epochs if e < epochs[-1] or iters % 23 == 0 or "--limit-batches" in flags]
    written = (out / "checkpoints").iterdir() if (out / "checkpoints").exists() else []
    assert sorted(p.name for p in written if p.is_dir()) == [f"epoch_{e:04d}" for e in complete]
