"""MGRIT under mpiexec: the same residual histories, states and adjoints on 1, 2 and 4 ranks
(including ranks that own no C-point, and a rank that owns no point at all)."""
from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import run_mpi
    out = {}
    for n in (1, 2, 4):
        path = tmp_path_factory.mktemp("mgrit") / f"p{n}.json"
        proc = run_mpi(n, "mgrit_scalar.py", str(path), timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[n] = json.loads(path.read_text())
    return out


@pytest.mark.parametrize("n", [2, 4])
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
        assert ref["residual"][-1] <= 1e-13, case


def test_bytes_sent_grow_with_ranks(runs):
    # each message carries one state of 3 float64 (24 bytes); one process sends none
    for case in ("fcf_v3", "f_v2"):
        b1, b2, b4 = (runs[n][case]["bytes"][-1] for n in (1, 2, 4))
        assert b1 == 0 and 0 < b2 < b4 and b2 % 24 == 0 and b4 % 24 == 0
