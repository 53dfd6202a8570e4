"""FGSM, PGD and adversarial training (``ocnet.convex.adversarial``): on a linear model the
worst case of an ℓ∞ attack has a closed form, which both attacks must reach; scores and
training against it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ocnet.convex.adversarial import attacked_accuracy, fgsm, pgd, train
from ocnet.convex.network import TwoLayerReLU

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend


def _linear(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Linear(3, 1).double()
    with torch.no_grad():
        net.weight.copy_(torch.randn(1, 3, generator=g, dtype=torch.float64))
        net.bias.fill_(0.2)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.where(torch.randn(40, generator=g, dtype=torch.float64) > 0, 1.0, -1.0).double()
    return net, x, y


@pytest.mark.parametrize("attack", [fgsm, pgd])
def test_on_a_linear_model_both_attacks_reach_the_worst_case_in_closed_form(attack):
    """For f(x) = w·x + b the largest logistic loss within ‖δ‖∞ ≤ ε is
    Σ softplus(−y f(x) + ε ‖w‖₁), at δ = −ε y sign(w): the attack must find it exactly."""
    net, x, y = _linear()
    eps = 0.3
    attacked = attack(net, x, y, eps)
    w = net.weight[0].detach()
    assert float((attacked - x).abs().max()) == pytest.approx(eps, rel=1e-12)
    torch.testing.assert_close(attacked - x, -eps * y[:, None] * w.sign(), rtol=0, atol=1e-12)
    with torch.no_grad():
        worst = torch.nn.functional.softplus(-y * net(x)[:, 0] + eps * w.abs().sum()).sum()
        got = torch.nn.functional.softplus(-y * net(attacked)[:, 0]).sum()
    assert float(got) == pytest.approx(float(worst), rel=1e-12)


def test_attacked_accuracy_is_the_share_beyond_the_margin():
    """A linear model keeps a sample against every ℓ∞ attack of radius ε exactly when its
    margin y f(x) exceeds ε ‖w‖₁; ε = 0 is the clean accuracy."""
    net, x, y = _linear(1)
    with torch.no_grad():
        margin = y * net(x)[:, 0]
    norm = float(net.weight.detach().abs().sum())
    for eps in (0.0, 0.1, 0.4):
        expected = float((margin > eps * norm).double().mean())
        assert attacked_accuracy(net, x, y, eps) == pytest.approx(expected)
        assert attacked_accuracy(net, x, y, eps, attack=fgsm) == pytest.approx(expected)


def test_adversarial_training_holds_up_better_under_attack_than_plain_training():
    """Two classes 1.2 apart along the first axis with a wide spread along the second, which
    plain training uses too: trained against PGD at ε = 0.5, the network keeps more samples
    under that attack than the one trained on clean inputs."""
    g = torch.Generator().manual_seed(3)
    y = torch.where(torch.arange(80) % 2 == 0, 1.0, -1.0).double()
    x = torch.stack([0.6 * y + 0.15 * torch.randn(80, generator=g, dtype=torch.float64),
                     0.3 * y + 1.0 * torch.randn(80, generator=g, dtype=torch.float64)], dim=1)
    scores = {}
    for eps in (0.0, 0.5):
        torch.manual_seed(0)
        net = TwoLayerReLU(2, 8).double()
        losses = train(net, x, y, eps=eps, steps=300, lr=0.02)
        assert losses[-1] < losses[0]
        scores[eps] = attacked_accuracy(net, x, y, 0.5)
    assert scores[0.5] > scores[0.0]


def test_bad_radii_and_steps_are_refused():
    net, x, y = _linear()
    with pytest.raises(ValueError, match="radius ε must be at least 0, got -0.1"):
        fgsm(net, x, y, -0.1)
    with pytest.raises(ValueError, match="PGD takes at least one step, got 0"):
        pgd(net, x, y, 0.1, steps=0)
