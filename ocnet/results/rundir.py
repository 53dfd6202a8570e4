"""A run directory read back: its records, summary and configuration, and the trained network
as a plain module.

::

    from ocnet import load_run
    run = load_run("runs/digits-serial-P8")
    run.model(x)                    # a torch.nn.Sequential with the trained weights
    run.convex_model(x)             # with --head convex: the same with the convex head
    run.summary["final_test_acc"], run.history[-1]

The records are read as they are on disk (a run still going has no summary or model yet, and
its last line may be half written); the network is built when it is first asked for.
"""
from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import torch

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib

from ..convex.head import attach
from ..convex.network import TwoLayerReLU
from ..model.data import load
from ..model.problem import Problem, from_config
from ..runs.config import resolve


def num(v: Any) -> float | None:
    """``v`` as a finite float, or None (for None, NaN, inf, bools, strings, lists)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass
class Run:
    """What :func:`load_run` returns.

    Attributes
    ----------
    path : Path
        The run directory.
    history : list of dict
        The records of ``history.jsonl``, in file order (a torn last line left out).
    summary : dict
        ``summary.json``, or ``{}`` while the run has not finished.
    config : dict
        ``config.toml`` (the configuration the run resolved), or ``{}``.
    suffix : str
        Appended to :attr:`label` to tell apart runs whose labels would collide
        (set by :func:`load_runs`).
    """

    path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    suffix: str = ""

    @property
    def iters(self) -> list[dict[str, Any]]:
        """The ``kind == "iter"`` records (one per optimiser step), in file order."""
        return [r for r in self.history if r.get("kind") == "iter"]

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """The ``kind == "epoch"`` records, in file order."""
        return [r for r in self.history if r.get("kind") == "epoch"]

    @cached_property
    def problem(self) -> Problem:
        """The network with the trained parameters (``model.pt``), on the CPU.

        Rebuilt from the configuration and the input shape the summary records; a run written
        before the summary held it loads its data set once to learn the shape (which needs its
        ``data_dir`` for MNIST and CIFAR).

        Raises
        ------
        FileNotFoundError
            When the directory holds no finished run (no ``model.pt`` or ``summary.json``).
        """
        for name in ("config.toml", "summary.json", "model.pt"):
            if not (self.path / name).is_file():
                raise FileNotFoundError(f"{self.path} holds no finished run: {name} is missing")
        config = resolve(["--config", str(self.path / "config.toml")])
        if "input_shape" in self.summary:
            shape, n_classes = tuple(self.summary["input_shape"]), self.summary["n_classes"]
        else:
            data = load(config["problem"], config["data_dir"] or None, config["seed"])
            shape, n_classes = data.input_shape, data.n_classes
        problem = from_config(config, shape, n_classes)
        problem.load_state_dict(torch.load(self.path / "model.pt", weights_only=True, map_location="cpu"))
        return problem

    @cached_property
    def model(self) -> torch.nn.Sequential:
        """``problem.to_torch()``: opening, layers and classifier as a plain module, in
        evaluation mode."""
        return self.problem.to_torch().eval()

    @cached_property
    def convex_model(self) -> torch.nn.Sequential:
        """:attr:`model` with its classifier's last linear map replaced by the convex head
        (``convex_head.pt``, which ``--head convex`` writes), in evaluation mode.

        Raises
        ------
        FileNotFoundError
            When the run fitted no convex head.
        """
        path = self.path / "convex_head.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} holds no convex head ({path.name}: runs with --head convex)")
        state = torch.load(path, weights_only=True, map_location="cpu")
        m, d = state["hidden.weight"].shape
        head = TwoLayerReLU(d, m, state["output.weight"].shape[0]).to(state["hidden.weight"].dtype)
        head.load_state_dict(state)
        model = self.problem.to_torch().eval()
        model[-1] = attach(model[-1], head)
        return model

    @property
    def base_label(self) -> str:
        """``"{solver} P={ranks}"`` (and ``" D={groups}"`` with several data groups), from the
        summary (else the config, else the directory name)."""
        solver = self.summary.get("solver") or self.config.get("solver")
        ranks = self.summary.get("ranks", self.config.get("ranks"))
        if not solver:
            return self.path.resolve().name  # resolve: Path(".").name is empty
        groups = f" D={self.groups}" if self.groups > 1 else ""
        return f"{solver} P={ranks}{groups}" if ranks is not None else str(solver)

    @property
    def groups(self) -> int:
        """The run's data groups (``--data-parallel``; 1 for runs before there were any)."""
        return int(self.summary.get("data_parallel", self.config.get("data_parallel", 1)))

    @property
    def label(self) -> str:
        """Legend label: :attr:`base_label`, plus the directory name when labels collide."""
        return f"{self.base_label} ({self.suffix})" if self.suffix else self.base_label

    @property
    def n_layers(self) -> int | None:
        """Number of layers N: from the records, else the summary, else the config."""
        for rec in reversed(self.history):
            if num(rec.get("n_layers")) is not None:
                return int(rec["n_layers"])
        for src in (self.summary, self.config):
            for key in ("n_layers", "layers"):
                if num(src.get(key)) is not None:
                    return int(src[key])
        return None


def load_run(run_dir: str | Path) -> Run:
    """Read the run in ``run_dir``, finished or still going.

    Raises
    ------
    FileNotFoundError
        If ``run_dir/history.jsonl`` does not exist.
    """
    path = Path(run_dir)
    hist = path / "history.jsonl"
    if not hist.is_file():
        raise FileNotFoundError(f"{path} is not a run directory (no history.jsonl)")
    run = Run(path=path)
    lines = [ln for ln in hist.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i != len(lines) - 1:  # a torn last line is a run still writing; anything else is not
                warnings.warn(f"{hist}: skipping unparsable line {i + 1}", stacklevel=2)
            continue
        if isinstance(rec, dict):
            run.history.append(rec)
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        run.summary = summary if isinstance(summary, dict) else {}
    except (OSError, ValueError):
        pass
    try:
        run.config = tomllib.loads((path / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    return run


def load_runs(run_dirs: Iterable[str | Path | Run]) -> list[Run]:
    """Load several run directories and make their labels distinct.

    Runs whose ``"{solver} P={ranks}"`` labels collide get the directory name appended (or the
    whole path, where directory names collide too).
    """
    runs = [r if isinstance(r, Run) else load_run(r) for r in run_dirs]
    base = Counter(r.base_label for r in runs)
    names = Counter(r.path.resolve().name for r in runs)
    for r in runs:
        name = r.path.resolve().name
        if base[r.base_label] > 1:
            r.suffix = name if names[name] == 1 else str(r.path)
    return runs
