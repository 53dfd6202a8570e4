"""MGRIT under mpiexec: the same residual histories, states and adjoints on 1, 2, 3 and 4 ranks
(including ranks that own no C-point, and ranks that own no point at all: first, in the
middle or last), and divergence raised on every rank."""
from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import run_mpi
    out = {}
    for n in (1, 2, 3, 4):
        path = tmp_path_factory.mktemp("mgrit") / f"p{n}.json"
        proc = run_mpi(n, "mgrit_scalar.py", str(path), timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[n] = json.loads(path.read_text())
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3, 4])
def test_same_history_as_one_rank(runs, n):
    one, many = runs[1], runs[n]
    assert set(one) == set(many)
    for case, ref in one.items():
        got = many[case]
        assert len(got["residual"]) == len(ref["residual"]), case
        np.testing.assert_allclose(got["residual"], ref["residual"], rtol=1e-12, atol=1e-20, err_msg=case)
        np.testing.assert_allclose(got["states"], ref["states"], rtol=1e-12, atol=1e-15, err_msg=case)
        if "lam" in ref:
            np.testing.assert_allclose(got["adjoint_residual"], ref["adjoint_residual"], rtol=1e-12, atol=1e-20)
            assert [k for k, _ in got["lam"]] == [k for k, _ in ref["lam"]]
            np.testing.assert_allclose([v for _, v in got["lam"]], [v for _, v in ref["lam"]], rtol=1e-12)
            assert got["steps"] == ref["steps"], case  # the same work, only spread out
        if case == "torchbraid":  # one correction: far from converged, and the same on every rank count
            assert len(ref["residual"]) == 2 and ref["residual"][-1] > 1e-6
        else:
            assert ref["residual"][-1] <= 1e-13, case


@pytest.mark.mpi
def test_bytes_sent_grow_with_ranks(runs):
    # each message carries one state of 3 float64 (24 bytes); one process sends none
    for case in ("fcf_v3", "f_v2"):
        b1, b2, b4 = (runs[n][case]["bytes"][-1] for n in (1, 2, 4))
        assert b1 == 0 and 0 < b2 < b4 and b2 % 24 == 0 and b4 % 24 == 0


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_divergence_raises_on_every_rank(mpi, tmp_path, n):
    path = tmp_path / "nan.json"
    proc = mpi(n, "mgrit_nan.py", str(path), timeout=120)  # a rank left waiting would time out
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads(path.read_text())
    assert len(reports) == n
    expected = {"overflow": (1, 1, False), "overflow_f3": (1, 2, False), "nan_u0": (0, 0, False),
                "adjoint": (0, 0, True)}
    for case, (iteration, level, adjoint) in expected.items():
        got = [r[case] for r in reports]
        assert all(g is not None and g["type"] == "MGRITDivergence" for g in got), (case, got)
        assert all(g == got[0] for g in got), case  # the same error on every rank
        assert (got[0]["iteration"], got[0]["level"], got[0]["adjoint"]) == (iteration, level, adjoint), got[0]
        assert got[0]["residual"][-1] in ("nan", "inf"), got[0]
