"""The memory estimate: exact parameter counts, instant refusal of networks that cannot fit."""
from __future__ import annotations

import pytest
import torch

from ocnet.model.options import ConfigError
from ocnet.model.problem import build
from ocnet.runs import memory as memory_mod
from ocnet.runs.config import resolve
from ocnet.runs.launcher import Stopwatch
from ocnet.runs.memory import LAYER_OVERHEAD, MemoryEstimate, check_memory, format_bytes, memory_estimate

GB = 10**9


def parameter_bytes(p: torch.nn.Module) -> int:
    return sum(q.numel() * q.element_size() for q in p.parameters())


@pytest.mark.parametrize("shape,sizes", [
    ((1, 8, 8), dict(net="dense", layers=16, width=32)),
    ((2,), dict(net="dense", layers=5, width=7, dtype=torch.float64)),
    ((3, 32, 32), dict(net="conv", layers=12, channels=[16, 32, 64])),
    ((1, 28, 28), dict(net="conv", layers=7, channels=[8, 4], norm="none")),
    ((3, 9, 9), dict(net="conv", layers=3, channels=[4, 4, 4], norm="instance")),
    ((1, 8, 8), dict(net="transformer", layers=4, width=16, heads=2)),
    ((3, 32, 32), dict(net="transformer", layers=3, width=24, heads=3, patch=4)),
    ((16,), dict(net="transformer", layers=2, width=8, heads=1, vocab=8)),
    ((1, 40), dict(net="conv1d", layers=6, channels=[8, 16])),
    ((3, 17), dict(net="conv1d", layers=3, channels=[4, 4, 4], norm="none")),
])
def test_parameters_counted_exactly(shape, sizes):
    """On one rank the slice is the whole network: parameters + gradients + Adam's two
    moments are 4 × the parameters torch allocates (the test asks for a factor 3 at most)."""
    estimate = memory_estimate(shape, 10, **sizes)
    measured = parameter_bytes(build(shape, 10, **sizes))
    assert estimate.local == measured
    assert estimate.local + estimate.training == 4 * measured
    layers = sizes["layers"] + len(sizes.get("channels", [0])) - 1
    assert estimate.network == measured + (layers + 2) * LAYER_OVERHEAD


def test_slice_of_several_ranks_bounds_every_partition():
    """The slice of a rank is bounded by its share of the largest layers."""
    sizes = dict(net="conv", layers=12, channels=[16, 32, 64])
    p = build((3, 32, 32), 10, **sizes)
    one = memory_estimate((3, 32, 32), 10, **sizes)
    four = memory_estimate((3, 32, 32), 10, n_ranks=4, **sizes)
    layer_bytes = sorted((parameter_bytes(layer) for layer in p.layers), reverse=True)
    ends = parameter_bytes(p.opening) + parameter_bytes(p.classifier)
    assert four.local == ends + sum(layer_bytes[:4])  # 14 layers over 4 ranks: at most 4 each
    assert four.local < one.local and four.activations < one.activations
    assert four.network == one.network  # every rank builds the whole network


def test_activations_and_data():
    e = memory_estimate((1, 8, 8), 10, net="dense", layers=4, width=32, batch_size=100, n_samples=50,
                        optimizer="sgd")
    # 50 samples (the batch cannot be larger) × (input 64 + 5 × (opening 32 + 4 layers × 32) + logits 10)
    assert e.activations == 50 * (64 + 5 * (32 + 4 * 32) + 10) * 4
    assert e.data == 50 * 64 * 4
    assert e.training == 2 * e.local  # SGD: gradient and momentum


def test_huge_width_fails_fast_with_the_sizes():
    with Stopwatch() as watch, pytest.raises(ConfigError) as info:
        check_memory((1, 28, 28), 10, net="dense", layers=16, width=10**9, batch_size=64, n_samples=70000)
    assert watch.elapsed < 1.0
    message = str(info.value)
    assert message.startswith("the network needs about 256 EB per rank (parameters 64 EB, gradients and "
                              "optimiser state 192 EB, activations 22 TB, data 220 MB); this machine has ")
    assert message.endswith(" available") and "\n" not in message


def test_huge_channels_fail_with_a_known_machine(monkeypatch):
    monkeypatch.setattr(memory_mod, "available_memory", lambda device="cpu": 23 * GB)
    with pytest.raises(ConfigError) as info:
        check_memory((3, 32, 32), 10, net="conv", layers=16, channels=[10**6], sharing=4)
    assert str(info.value) == ("the network needs about 2.3 PB per rank (parameters 576 TB, gradients and optimiser "
                               "state 1.7 PB, activations 22 TB, data 0 B); this machine has 23 GB available, "
                               "5.8 GB for each of its 4 ranks")


def test_gpu_memory_is_checked_separately(monkeypatch):
    free = {"cpu": 100 * GB, "cuda": 1 * GB}
    monkeypatch.setattr(memory_mod, "available_memory", lambda device="cpu": free[torch.device(device).type])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    sizes = dict(net="dense", layers=16, width=8192, batch_size=64)
    estimate = memory_estimate((2,), 5, **sizes)
    assert estimate.parts("cuda:0")["host"] == {"parameters": estimate.network}
    with pytest.raises(ConfigError) as info:
        check_memory((2,), 5, device="cuda:0", sharing=4, **sizes)  # 2 ranks on each GPU
    assert str(info.value) == ("the network needs about 17 GB per rank on the GPU (parameters 4.3 GB, gradients and "
                               "optimiser state 13 GB, activations 178 MB, data 0 B); cuda:0 has 1 GB available, "
                               "500 MB for each of its 2 ranks")
    assert check_memory((2,), 5, device="cpu", **sizes) == estimate  # 21 GB fit into 100 GB


def test_default_configuration_fits():
    config = resolve([])
    estimate = check_memory((1, 8, 8), 10, net="dense", layers=config["layers"], width=config["width"],
                            channels=config["channels"], batch_size=config["batch_size"], n_samples=1797)
    assert isinstance(estimate, MemoryEstimate)
    assert sum(estimate.parts()["host"].values()) < 10**7


def test_available_memory_is_positive():
    assert memory_mod.available_memory() > 0


@pytest.mark.parametrize("n,text", [(0, "0 B"), (999, "999 B"), (1000, "1 kB"), (12_345, "12 kB"),
                                    (3.7e15, "3.7 PB"), (23e9, "23 GB"), (1e27, "1000 YB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text
