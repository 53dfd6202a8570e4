"""``--head convex``: after training, the classifier's last linear map refitted by the convex
program (:mod:`ocnet.convex.head`), scored beside the trained one and saved.

:func:`check` refuses, before any training and on every rank, a head that could not be fitted;
:func:`fit` runs on rank 0 once the run's parameters are gathered.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..convex import head
from ..model.data import Dataset
from ..model.options import ConfigError
from ..model.problem import Problem

#: The file of the fitted head in the run directory: the state of a
#: :class:`~ocnet.convex.network.TwoLayerReLU` on the classifier's features.
FILE = "convex_head.pt"


def _samples(config: Mapping[str, Any], n_train: int) -> int:
    return min(n_train, config["convex_samples"] or n_train)


def check(config: Mapping[str, Any], problem: Problem, n_train: int) -> None:
    """Raise :class:`ConfigError` for a head :func:`fit` would refuse or could not run: its
    program too large for the solver, or CVXPY not installed where it is needed."""
    if config["head"] != "convex":
        return
    try:
        d = head.last_linear(problem.classifier)[1].in_features
        head.check(_samples(config, n_train), d, problem.n_classes, patterns=config["convex_patterns"],
                   beta=config["convex_beta"], eps=config["convex_eps"], solver=config["convex_solver"])
    except ValueError as e:
        raise ConfigError(f"--head convex: {e}") from None
    if config["convex_solver"] == "cvxpy" or config["convex_eps"] > 0:
        try:
            import cvxpy  # noqa: F401
        except ImportError:
            raise ConfigError("--head convex with " + ("--convex-eps > 0" if config["convex_eps"] > 0 else
                              "--convex-solver cvxpy") + " needs CVXPY: pip install ocnet[convex]") from None


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def fit(config: Mapping[str, Any], problem: Problem, data: Dataset) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rank 0: the fitted head ``(n, d) → (n, C)`` on the features of ``problem``'s
    classifier, and the summary's ``convex_head`` entry: the certified objective (the sum of
    the C programs' objectives), the solver's status, and the train and test accuracy of the
    network with its trained classifier (``sgd_*``) and with the convex head (``convex_*``)."""
    model = problem.to_torch().to(data.x_train.device).eval()
    classifier = model[-1]
    phi = head.features(model, classifier, data.x_train)
    y = data.y_train
    n = _samples(config, len(y))
    if n < len(y):  # a seeded subset: the same samples on every device
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(config["seed"]))[:n]
        phi, y = phi[keep.to(phi.device)], y[keep.to(y.device)]
    result = head.fit(phi, y, patterns=config["convex_patterns"], beta=config["convex_beta"],
                      loss=config["convex_loss"], eps=config["convex_eps"], solver=config["convex_solver"],
                      tol=config["convex_tol"], generator=torch.Generator().manual_seed(config["seed"]))
    convex = head.attach(classifier, result.head)
    with torch.no_grad():
        def scores(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            states = model[:-1](x)
            return classifier(states), convex(states)
        entry: dict[str, Any] = {}
        for split, x, labels in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
            sgd_logits, convex_logits = (torch.cat(parts) for parts in
                                         zip(*(scores(x[i:i + 1024]) for i in range(0, len(x), 1024))))
            entry[f"sgd_{split}_acc"] = _accuracy(sgd_logits, labels)
            entry[f"convex_{split}_acc"] = _accuracy(convex_logits, labels)
            if split == "train":  # the trained head's own objective: its mean cross-entropy
                entry["sgd_train_loss"] = float(problem.loss(sgd_logits, labels))
    statuses = sorted({s.status for s in result.solutions})
    entry.update(objective=result.objective, status=statuses[0] if len(statuses) == 1 else ",".join(statuses),
                 iterations=max(s.iterations for s in result.solutions),
                 violation=max(s.objective.violation for s in result.solutions),
                 neurons=result.head.hidden.out_features, samples=n, features=phi.shape[1],
                 seconds=result.seconds)
    return result.head, {"convex_head": entry}
