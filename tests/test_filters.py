"""Communication filters: shapes, bytes, the projection property, selection by name."""
import pytest
import torch

from ocnet.ranks.comm import SelfComm
from ocnet.ranks.filters import FILTERS, IDENTITY, Downsample
from ocnet.runs.config import ConfigError, resolve


def test_downsample_shapes_and_bytes():
    u = torch.randn(5, 16, 8, 8, dtype=torch.float64)
    comm = SelfComm()
    comm.isend(IDENTITY.encode(u), 0)
    full = comm.bytes_sent
    comm.isend(FILTERS["downsample2"].encode(u), 0)
    assert full == 5 * 16 * 8 * 8 * 8
    assert comm.bytes_sent - full == full // 4  # exactly s² = 4 times fewer
    assert FILTERS["downsample4"].encode(u).shape == (5, 16, 2, 2)
    assert FILTERS["downsample2"].decode(FILTERS["downsample2"].encode(u)).shape == u.shape


def test_window_means_and_projection():
    f = Downsample(2)
    u = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    v = f.encode(u)
    torch.testing.assert_close(v[:, :, 1, 2], u[:, :, 2:4, 4:6].mean((-1, -2)), rtol=1e-14, atol=0)
    torch.testing.assert_close(f.encode(f.decode(v)), v, rtol=0, atol=0)  # decode is a right inverse
    p = f.project(u)
    torch.testing.assert_close(f.project(p), p, rtol=1e-14, atol=1e-15)  # idempotent
    w = torch.randn_like(u)
    assert float((f.project(w) * u).sum()) == pytest.approx(float((w * p).sum()), rel=1e-12)  # symmetric


def test_bilinear_decode_reproduces_smooth_fields():
    f = Downsample(2, mode="bilinear")
    const = torch.full((1, 1, 8, 8), 2.5)
    torch.testing.assert_close(f.project(const), const)
    assert f.name == "downsample2-bilinear"


def test_dense_states_pass_and_bad_sizes_fail():
    u = torch.randn(4, 32)
    assert FILTERS["downsample2"].encode(u) is u
    with pytest.raises(ValueError, match="multiple"):
        Downsample(4).encode(torch.randn(1, 1, 6, 6))


def test_gradients_flow_through_the_filter():
    u = torch.randn(2, 3, 4, 4, requires_grad=True)
    FILTERS["downsample2"].project(u).sum().backward()
    torch.testing.assert_close(u.grad, torch.ones_like(u))  # the projection keeps window sums


def test_selected_by_configuration():
    assert resolve(["--filter", "downsample2"])["filter"] == "downsample2"
    with pytest.raises(ConfigError, match="unknown filter"):
        resolve(["--filter", "downsample3"])
