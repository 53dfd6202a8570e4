"""Atomic writes and sharded checkpoints."""
import os

import pytest
import torch

from ocnet import checkpoint
from ocnet.comm import SelfComm


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    checkpoint.atomic_write(path, "old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        checkpoint.atomic_write(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]  # no temporary left behind


def test_save_and_load_round_trip(tmp_path):
    comm = SelfComm()
    state = {"solver": {"w": torch.arange(3.0), "opt": [{"step": 4}]}, "epoch": 2}
    checkpoint.save(comm, tmp_path, 2, state)
    assert checkpoint.latest(tmp_path) == {"epoch": 2, "ranks": 1}
    epoch, loaded = checkpoint.load(comm, tmp_path)
    assert epoch == 2 and torch.equal(loaded["solver"]["w"], state["solver"]["w"])


def test_load_refuses_code_in_a_checkpoint(tmp_path):
    comm = SelfComm()
    checkpoint.save(comm, tmp_path, 0, {"x": 1})
    # a shard that would run code when unpickled
    torch.save({"evil": os.system}, checkpoint.shard_path(tmp_path, 0, 0))
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        checkpoint.load(comm, tmp_path)


def test_resume_needs_a_complete_checkpoint_of_as_many_ranks(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpoint.complete_epoch(tmp_path, 1)
    checkpoint.save(SelfComm(), tmp_path, 3, {"x": 1})
    assert checkpoint.complete_epoch(tmp_path, 1) == 3
    with pytest.raises(FileNotFoundError, match="written by 1 ranks, this job has 4"):
        checkpoint.complete_epoch(tmp_path, 4)
