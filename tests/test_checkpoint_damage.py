"""A damaged ``checkpoints/latest.json`` is not believed before the checkpoint it names is
checked, and a shard that is no file is named for what it is: the message says what is
wrong with the run directory, not what the user should change."""
import hashlib
import json
import os
import shutil

import pytest

from ocnet.run import main
from ocnet.runs import checkpoint
from ocnet.runs.checkpoint import CheckpointError
from ocnet.runs.job import EXIT_SETUP

TINY = ["--layers", "4", "--width", "8", "--quiet", "--timeline-steps", "0", "--limit-batches", "2"]
SHARD = "checkpoints/epoch_0001/rank_000.pt"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 2-epoch run with a checkpoint after each epoch."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(["--out", str(out), "--epochs", "2", "--checkpoint-every", "1", *TINY]) == 0
    return out


def _digest(run_dir):
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and not p.is_symlink()}


def _marker(run_dir, **changes):
    path = run_dir / "checkpoints" / "latest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _shard_is(kind):
    def damage(run_dir):
        shard = run_dir / SHARD
        shard.unlink()
        if kind == "directory":
            shard.mkdir()
        else:
            os.symlink(kind, shard)
    return damage


@pytest.mark.parametrize("damage,message", [
    (lambda d: _marker(d, epoch=99),
     "{d}/checkpoints/latest.json names the checkpoint after epoch 99, but {d}/checkpoints/epoch_0099 is not "
     "there: latest.json is damaged, or that checkpoint was removed"),
    (lambda d: _marker(d, batch=1),
     "{d}/checkpoints/latest.json names the checkpoint after batch 1 of epoch 1, but "
     "{d}/checkpoints/epoch_0001_batch_00001 is not there"),
    (lambda d: _marker(d, ranks=7),
     "{d}/checkpoints/latest.json: 'ranks' is 7 but 'starts' gives the first layers of 1: the file is damaged"),
    (lambda d: _marker(d, ranks=7, starts=[0, 1, 2, 3, 3, 3, 3]),
     "{d}/checkpoints/latest.json: 'ranks' is 7 but 'n_layers' is 4: no job of more ranks than layers wrote it; "
     "the file is damaged"),
    (lambda d: _marker(d, ranks=2, starts=[0, 2]),  # the checkpoint of 1 rank, as if 2 had written it
     "{d}/checkpoints/epoch_0001/rank_001.pt: missing (the checkpoint is incomplete)"),
    (_shard_is("directory"),
     "{d}/" + SHARD + ": a directory, not a checkpoint file"),
    (_shard_is("/dev/null"), "{d}/" + SHARD + ": a link to /dev/null, a character device, not a checkpoint file"),
    (_shard_is("/nowhere/at/all"), "{d}/" + SHARD + ": a link to /nowhere/at/all, which does not exist"),
])
def test_resume_says_what_is_wrong_with_the_checkpoint(base, tmp_path, capsys, damage, message):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    damage(run)
    before = _digest(run)
    assert main(["--resume", str(run), "--epochs", "3", *TINY]) == EXIT_SETUP
    err = capsys.readouterr().err
    assert err.count("ocnet: error:") == 1 and err.startswith("ocnet: error: " + message.format(d=run)), err
    assert "--epochs must be" not in err and "use at most" not in err  # no advice about the job
    assert _digest(run) == before


def test_check_files_before_load(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    info = checkpoint.latest(run)
    checkpoint.check_files(run, info)  # the checkpoint it names is there
    (run / "checkpoints" / "epoch_0001").rename(run / "checkpoints" / "moved")
    with pytest.raises(CheckpointError, match="epoch_0001 is not there"):
        checkpoint.check_files(run, info)
    (run / "checkpoints" / "epoch_0001").write_text("")
    with pytest.raises(CheckpointError, match="epoch_0001 is not a directory"):
        checkpoint.check_files(run, info)
