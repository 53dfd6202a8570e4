"""History records: the fields a solver reports, and how each combines over ranks.

Every rank returns its own record from a step; the training loop combines the ranks'
records into one per step (at the end of each epoch, so that no collective interrupts the
pipeline).  How a field combines is declared once, here for the fields ocnet's solvers
share and in a solver's ``fields`` for its own:

``"sum"``
    each rank reports its share (``loss`` on the last rank; a rank's part of the constraint
    violation), the record holds the sum over the ranks that report it; dicts of numbers (a
    histogram of counts) are summed key by key;
``"first"``
    a value every rank knows (``rho``, MGRIT's residual history): rank 0's is kept;
``"max"`` / ``"min"``
    the largest (smallest) value over the ranks.

A field that nobody declares is summed when it is a number and taken from the first rank
otherwise.  Plots read a field's label and scale from the same schema.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Union

from ..ranks.comm import Comm

Value = Union[float, int, str, None, dict[str, Any]]
Record = dict[str, Value]

COMBINE = ("sum", "first", "max", "min")


@dataclass(frozen=True)
class Field:
    """One record field.

    Attributes
    ----------
    combine : {"sum", "first", "max", "min"}
        How the ranks' values become the record's (module docstring).
    label : str
        What a plot's axis calls it.
    log : bool
        Whether it is plotted on a logarithmic axis.
    mean : bool
        Whether it is a mean over the step's samples (``loss``): over data groups
        (:mod:`ocnet.ranks.replicas`), whose shares of a batch differ, it is then weighted by
        each group's share rather than summed.
    short : str
        The field's label on the console's line per epoch, which shows it (a per-phase dict
        as its largest value, a string without the label) while the line stays within 80
        columns; a field without one is printed, under its ``label``, with ``--verbose`` only.
    """

    combine: str
    label: str = ""
    log: bool = False
    mean: bool = False
    short: str = ""

    def __post_init__(self) -> None:
        if self.combine not in COMBINE:
            raise ValueError(f"unknown combine rule {self.combine!r}; choose from {', '.join(COMBINE)}")


FIELDS: dict[str, Field] = {
    "loss": Field("sum", "loss", log=True, mean=True),
    "bytes_sent": Field("sum", "bytes sent"),
    # the gradient exchange between data groups: {"conv": …, "matrix": …, "vector": …}
    "exchange_bytes": Field("sum", "gradient exchange bytes by kind of tensor"),
    "phase": Field("first", "phase", short="phase"),
    # the auxiliary-variable methods (penalty, al)
    "constraint_violation": Field("sum", "constraint violation", log=True, mean=True, short="viol"),
    "penalized_objective": Field("sum", "penalised objective", log=True, mean=True),
    "mu_sq": Field("sum", "squared multiplier norm per sample", mean=True),
    "rho": Field("first", "penalty rho", log=True),
    "mu_norm": Field("first", "multiplier norm |mu|", log=True),
    # MGRIT: per-phase dicts {"forward": …, "adjoint": …}
    "residual": Field("first", "residual norm", log=True),
    "conv_factor": Field("first", "convergence factor", log=True, short="conv"),
    "tolerance": Field("first", "residual tolerance", log=True),
    "n_layers": Field("first", "layers"),
    # nested iteration in depth: the layer count of the network the step or epoch trained
    "level": Field("first", "layers of the level"),
    "inexactness": Field("first", "inexactness (relative residual)", log=True),
    "mgrit_iters": Field("first", "iterations per solve"),
    "step_evals": Field("first", "step evaluations"),
}


def rule(name: str, value: Value, fields: Mapping[str, Field] = FIELDS) -> str:
    """The combine rule of field ``name`` (the default rule for an undeclared field)."""
    if name in fields:
        return fields[name].combine
    return "sum" if _number(value) else "first"


def combine(records: list[Record], fields: Mapping[str, Field] = FIELDS) -> Record:
    """One record from the ranks' records of the same step, in rank order."""
    out: Record = {}
    for rec in records:
        for key, value in rec.items():
            if key not in out:
                out[key] = value
                continue
            how = rule(key, value, fields)
            if how == "sum" and isinstance(value, dict) and isinstance(out[key], dict):
                out[key] = _summed(out[key], value)  # type: ignore[arg-type]
                continue
            if how == "first" or not _number(value) or not _number(out[key]):
                continue
            if how == "sum":
                out[key] += value  # type: ignore[operator]
            elif how == "max":
                out[key] = max(out[key], value)  # type: ignore[type-var]
            else:
                out[key] = min(out[key], value)  # type: ignore[type-var]
    return out


def combine_groups(records: list[Record], weights: list[float], fields: Mapping[str, Field] = FIELDS) -> Record:
    """One record from the data groups' records of the same step, each already combined over
    its layer ranks, in group order; ``weights`` are the groups' shares of the batch (summing
    to 1).  A per-sample mean (a field declared ``mean``) becomes the mean weighted by the
    shares; the other fields combine as over ranks (a ``"first"`` field is the first
    group's that reports it)."""
    out = combine(records, fields)
    for key, field in fields.items():
        if field.mean and field.combine == "sum" and key in out:
            shares = [(w, float(rec[key])) for rec, w in zip(records, weights)  # type: ignore[arg-type]
                      if _number(rec.get(key))]
            out[key] = sum(w * v for w, v in shares) / (sum(w for w, _ in shares) or 1.0)
    return out


def reduce(comm: Comm, name: str, value: float, fields: Mapping[str, Field] = FIELDS) -> float:
    """The combined value of a numeric field over the ranks, on every rank (a collective:
    every rank calls it, with 0 where it has no share of a ``"sum"`` field).

    On a grid of data groups (:mod:`ocnet.ranks.replicas`) it is the mean of the groups' values
    (the largest or smallest for ``"max"`` or ``"min"``), the same number in every group:
    a solver that decides on it decides alike everywhere."""
    how = rule(name, value, fields)
    value = float(comm.bcast(value, root=0)) if how == "first" else float(comm.allreduce(float(value), op=how))
    replicas = comm.replicas
    if replicas is None or replicas.size == 1:
        return value
    if how in ("max", "min"):
        return float(replicas.allreduce(value, op=how))
    return float(replicas.allreduce(value)) / replicas.size


def jsonable(value: Any) -> Any:
    """``value`` with every nan or ±inf replaced by ``None``: strict JSON parsers reject
    the bare ``NaN`` / ``Infinity`` that :func:`json.dumps` writes by default."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``value`` (non-finite numbers become ``null``)."""
    return json.dumps(jsonable(value), allow_nan=False, **kwargs)


def non_finite(record: Record) -> str | None:
    """The name of the first numeric field of ``record`` that is nan or ±inf (``"residual.forward"``
    inside a per-phase dict), or ``None``."""
    for key, value in record.items():
        inner = value.items() if isinstance(value, dict) else [(None, value)]
        for phase, v in inner:
            if isinstance(v, float) and not math.isfinite(v):
                return key if phase is None else f"{key}.{phase}"
    return None


def _summed(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a + b`` key by key (a key in one of them only keeps its value)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = out[k] + v if k in out and _number(v) and _number(out[k]) else out.get(k, v)
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
