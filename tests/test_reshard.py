"""Checkpoints that resume on another number of ranks, and runs killed while writing them.

Each continuation is compared with the run that was never interrupted: float64, losses and
parameters to rtol 1e-10 (they come out equal bit for bit).
"""
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import MPI_SCRIPTS, ROOT, run_mpi

from ocnet.runs import launcher

pytestmark = pytest.mark.mpi

CASES = ["serial_4to2", "serial_2to3", "penalty_4to2", "hybrid_2to3", "mgrit_2to1", "oneshot_2to1"]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """The cases of tests/mpi/reshard_solvers.py, written and resumed on 4, 2, 3 and 1 ranks."""
    root = tmp_path_factory.mktemp("reshard")
    proc = run_mpi(4, "reshard_solvers.py", str(root), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_a_solver_resumes_on_another_rank_count(library, case):
    """serial 4→2 and 2→3 (inside an epoch, micro-batches), penalty with 4 blocks 4→2, the
    hybrid with al 2→3 between a parallel and a serial step, MGRIT exact and one-shot with
    per-sample warm starts 2→1."""
    written = torch.load(library / case / "write.pt", weights_only=True)
    resumed = torch.load(library / case / "resume.pt", weights_only=True)
    after = sorted(resumed["losses"])
    assert len(after) >= 3 and after == [k for k in sorted(written["losses"]) if k >= after[0]]
    _close([resumed["losses"][k] for k in after], [written["losses"][k] for k in after])
    assert sorted(resumed["params"]) == sorted(written["params"])
    for name, value in written["params"].items():
        _close(resumed["params"][name], value)


# -- runs of python -m ocnet.run killed while they write checkpoints ------------------------------
# Chains of runs of one directory: the first starts it, each next resumes it (OCNET_FAULT per run).
K = "checkpoint:0:kill:"
CHAINS = {
    "ref": [""],
    "second": [K + "2", ""],
    "third": [K + "3", ""],
    "again": [K + "2", K + "1", K + "1", K + "2", K + "1", K + "1", ""],  # killed at the same write, thrice
    "twice": [K + "2", K + "2", ""],
    "seesaw": [K + "2", K + "1", K + "2", K + "1", ""],
    "late": [K + "3", K + "1", K + "1", K + "1", ""],
    # a checkpoint inside an epoch (SIGTERM at a step) killed while written, and resumed from
    "inside": ["step:0:term:30", "step:0:term:5," + K + "1", "step:0:term:20", K + "1", ""],
    "first": [K + "1", ""],  # nothing complete to resume from
}


@pytest.fixture(scope="module")
def kills(tmp_path_factory):
    root = tmp_path_factory.mktemp("kills")
    proc = launcher.run([sys.executable, str(MPI_SCRIPTS / "reshard_kill.py"), str(root), json.dumps(CHAINS)],
                        cwd=ROOT, timeout=300,
                        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, json.loads((root / "result.json").read_text())


def _records(run_dir: Path) -> list[dict]:
    """The history without the clock."""
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time"}
            for line in (run_dir / "history.jsonl").read_text().splitlines()]


def _same_run(run_dir: Path, ref: Path, rtol: float = 0.0) -> None:
    a, b = _records(run_dir), _records(ref)
    assert [(r["kind"], r["epoch"], r["step"]) for r in a] == [(r["kind"], r["epoch"], r["step"]) for r in b]
    if rtol == 0.0:
        assert a == b
    else:
        _close([r["loss"] for r in a], [r["loss"] for r in b])
    model, expected = (torch.load(d / "model.pt", weights_only=True) for d in (run_dir, ref))
    assert sorted(model) == sorted(expected)
    for k in expected:
        if rtol == 0.0:
            assert torch.equal(model[k], expected[k]), k
        else:
            _close(model[k], expected[k])


def test_runs_killed_while_writing_checkpoints_resume_bit_for_bit(kills):
    root, result = kills
    killed = 0
    for chain, runs in result.items():
        if chain in ("ref", "first"):
            continue
        for run in runs[:-1]:
            if run["fault"].endswith(tuple(K + k for k in "123")):
                assert run["status"] == -9, (chain, run)  # SIGKILL while a shard was written
                assert len(run["tmp"]) == 1 and "/.rank_000.pt." in run["tmp"][0], (chain, run)
                killed += 1
            else:
                assert run["status"] == 128 + 15 and run["tmp"] == [], (chain, run)  # stopped by SIGTERM
        assert runs[-1]["status"] == 0 and runs[-1]["tmp"] == [], (chain, runs[-1])
        _same_run(root / chain, root / "ref")
        info = json.loads((root / chain / "checkpoints" / "latest.json").read_text())
        assert (info["epoch"], info["batch"], info["ranks"]) == (2, None, 1)
    assert killed == 20
    # a run killed before any checkpoint was complete cannot resume, and says so
    first = result["first"]
    assert [r["status"] for r in first] == [-9, 2]
    assert (root / "logs" / "first_1.txt").read_text() == (
        f"ocnet: error: cannot resume {root / 'first'}: it has no complete checkpoint "
        "(--checkpoint-every K writes them)\n")


def test_run_resumes_on_other_rank_counts_after_kills(mpi, kills, tmp_path):
    """P = 4 killed on rank 2 while writing epoch 1 → resumed on 2 ranks (from epoch 0),
    killed on rank 1 while writing epoch 2 → resumed on 3 ranks (from epoch 1): the run of
    one rank, never interrupted."""
    root, _ = kills
    out = tmp_path / "run"
    flags = ["--layers", "4", "--epochs", "3", "--checkpoint-every", "1", "--dtype", "float64", "--quiet",
             "--threads", "1"]
    # (ranks, where, fault, the checkpoint being written when the fault's rank dies, the last complete one)
    steps = [(4, ["--out", str(out)], "checkpoint:2:kill:2", "epoch_0001", 0),
             (2, ["--resume", str(out)], "checkpoint:1:kill:2", "epoch_0002", 1),
             (3, ["--resume", str(out)], "", None, 2)]
    for ranks, where, fault, dying, complete in steps:
        proc = mpi(ranks, "ocnet.run", *flags, *where, module=True, plain=True, timeout=120,
                   env={"OCNET_FAULT": fault})
        info = json.loads((out / "checkpoints" / "latest.json").read_text())
        tmps = list(out.rglob(".*.tmp"))
        if fault:
            assert proc.returncode != 0
            # the launcher kills the other ranks, perhaps in the middle of their own shards
            assert {t.parent.name for t in tmps} == {dying}, tmps
            assert any(t.name.startswith(f".rank_00{fault.split(':')[1]}.pt.") for t in tmps), tmps
            assert (info["epoch"], info["batch"], info["ranks"]) == (complete, None, ranks)
        else:
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert tmps == [] and (info["epoch"], info["batch"], info["ranks"]) == (2, None, 3)
    _same_run(out, root / "ref", rtol=1e-10)
