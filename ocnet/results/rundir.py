"""A finished run read back from its directory: the trained network as a plain module.

::

    from ocnet import load_run
    run = load_run("runs/digits-serial-P8")
    run.model(x)                    # a torch.nn.Sequential with the trained weights
    run.summary["final_test_acc"], run.history[-1]
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import resolve
from .data import load
from .problem import Problem, from_config


@dataclass
class Run:
    """What :func:`load_run` returns.

    Attributes
    ----------
    config : dict
        The resolved configuration (``config.toml``).
    problem : Problem
        The network with the trained parameters (``model.pt``), on the CPU.
    model : torch.nn.Sequential
        ``problem.to_torch()``: opening, layers and classifier as a plain module, in
        evaluation mode.
    history : list of dict
        The records of ``history.jsonl``.
    summary : dict
        ``summary.json``.
    """

    config: dict[str, Any]
    problem: Problem
    model: torch.nn.Sequential
    history: list[dict[str, Any]]
    summary: dict[str, Any]


def load_run(run_dir: str | Path) -> Run:
    """Read the finished run in ``run_dir``.

    The network is rebuilt from the configuration and the input shape the summary records;
    a run written before the summary held it loads its data set once to learn the shape
    (which needs its ``data_dir`` for MNIST and CIFAR).

    Raises
    ------
    FileNotFoundError
        When ``run_dir`` holds no finished run (no ``model.pt`` or ``summary.json``).
    """
    run_dir = Path(run_dir)
    for name in ("config.toml", "summary.json", "model.pt"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} holds no finished run: {name} is missing")
    config = resolve(["--config", str(run_dir / "config.toml")])
    summary = json.loads((run_dir / "summary.json").read_text())
    if "input_shape" in summary:
        shape, n_classes = tuple(summary["input_shape"]), summary["n_classes"]
    else:
        data = load(config["problem"], config["data_dir"] or None, config["seed"])
        shape, n_classes = data.input_shape, data.n_classes
    problem = from_config(config, shape, n_classes)
    problem.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True, map_location="cpu"))
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line]
    return Run(config, problem, problem.to_torch().eval(), history, summary)
