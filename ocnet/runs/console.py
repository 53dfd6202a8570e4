"""What rank 0 prints while a run goes, whether or not its output is a terminal.

Under ``mpirun`` rank 0's streams are pipes, so a progress bar alone would show nothing
until the run ends.  :class:`Console` prints

* a line per epoch, at most :data:`WIDTH` columns: loss, train and test (or validation)
  accuracy, the solver's headline figures (those its record schema,
  :mod:`ocnet.solvers.records`, gives a ``short`` label: MGRIT's convergence factor, the
  penalty methods' constraint violation, the hybrid's phase, a word that needs no label;
  as many as fit) and the run's seconds so far; with ``verbose``, indented lines under it
  with every field of the solver under its full label (per phase) and the megabytes the
  epoch sent;
* with ``log_every = K``, a line every K steps (the step's loss reaches rank 0 with the
  per-step check the training loop makes anyway, one step late);
* with ``verbose``, rank 0's per-iteration histories of each step (MGRIT's residual norms
  ``r_k`` and their ratios, as XBraid's print level shows them);
* at the end, a statistics block (:func:`statistics`): time per epoch, and per rank its
  compute, its waits for messages and in collectives, and the bytes it sent;

and, when stderr is a terminal, a tqdm bar that the lines are written above.
"""
from __future__ import annotations

import math
import statistics as stats
import sys
from typing import Any, Mapping, Sequence, TextIO

from ..solvers.records import Field

#: The most columns a line per epoch takes (a terminal's classic width).
WIDTH = 80

#: Fields every epoch line shows in its own words, or that say nothing per epoch.
_OWN = frozenset({"loss", "bytes_sent", "wall_time", "train_acc", "val_acc", "val_loss", "test_acc", "test_loss",
                  "lr", "kind", "epoch", "step", "n_layers", "tolerance"})
_PHASE = {"forward": "fwd", "adjoint": "adj"}


class Console:
    """Rank 0's lines during a run (module docstring).

    Parameters
    ----------
    epochs : int
        The run's number of epochs (lines say ``epoch e/epochs``).
    n_batches : int
        Steps per epoch.
    fields : mapping of str to Field
        The solver's record schema: labels for its fields.
    log_every : int
        A line every this many steps; 0 for none.
    verbose : bool
        Per-iteration histories of every step.
    bar_steps : int
        The steps the bar counts (this job's); 0 for no bar.  A bar is drawn only when
        stderr is a terminal.
    stream : file
        Where the lines go (standard output).
    """

    def __init__(self, epochs: int, n_batches: int, fields: Mapping[str, Field], *, log_every: int = 0,
                 verbose: bool = False, bar_steps: int = 0, stream: TextIO | None = None) -> None:
        self.epochs, self.n_batches, self.fields = epochs, n_batches, fields
        self.log_every, self.verbose = log_every, verbose
        self.stream = stream or sys.stdout
        self.bar = None
        if bar_steps and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=bar_steps, unit="step", dynamic_ncols=True, leave=False)

    def say(self, line: str) -> None:
        """One line, above the bar if there is one."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def step(self, step: int, record: Mapping[str, Any]) -> None:
        """After step ``step`` of the run, with rank 0's own record."""
        if self.bar is not None:
            self.bar.update(1)
        if self.verbose:
            for name, value in record.items():
                if isinstance(value, dict) and any(isinstance(v, list) for v in value.values()):
                    self.say(f"  step {step} {self._label(name)}: {_history(value)}")

    def checked(self, epoch: int, step: int, batch: int, elapsed: float, loss: float | None) -> None:
        """Step ``step``, which ended ``elapsed`` seconds into the run, has been checked; its
        ``loss`` (summed over the ranks) came with the check."""
        if self.log_every and (batch + 1) % self.log_every == 0:
            loss_text = "nan" if loss is None else f"{loss:.4g}"
            self.say(f"epoch {epoch + 1}/{self.epochs}  step {batch + 1}/{self.n_batches} ({step})  "
                     f"loss {loss_text}  {elapsed:.1f} s")

    def epoch(self, record: Mapping[str, Any], last_step: Mapping[str, Any] | None) -> None:
        """The line of an epoch record, with the solver's fields of its last step (and, with
        ``verbose``, the lines of every field)."""
        for line in self.epoch_lines(record, last_step):
            self.say(line)
        if self.bar is not None:
            self.bar.set_postfix(loss=_number(record.get("loss")), test=_percent(record.get("test_acc")))

    def epoch_lines(self, record: Mapping[str, Any], last_step: Mapping[str, Any] | None) -> list[str]:
        """What :meth:`epoch` prints: the epoch's line (at most :data:`WIDTH` columns), then
        with ``verbose`` the solver's fields and the megabytes sent, wrapped to that width."""
        parts = [f"epoch {record['epoch'] + 1}/{self.epochs}", f"loss {_number(record.get('loss'))}",
                 f"train {_percent(record.get('train_acc'))}"]
        parts += [f"{name} {_percent(record[f'{name}_acc'])}" for name in ("val", "test")
                  if record.get(f"{name}_acc") is not None]
        shown = {**(last_step or {}), **{k: v for k, v in record.items() if v is not None}}
        seconds = f"{record.get('wall_time', 0.0):.1f} s"
        # the solver's headline figures, in the order of its schema, as many as fit
        for name, field in self.fields.items():
            if field.short and shown.get(name) is not None:
                value = shown[name]
                figure = value if isinstance(value, str) else f"{field.short} {_brief(value)}"
                if len("  ".join([*parts, figure, seconds])) > WIDTH:
                    break
                parts.append(figure)
        lines = ["  ".join([*parts, seconds])]
        if self.verbose:
            details = [f"{self._label(name)} {_value(value)}" for name, value in shown.items()
                       if name not in _OWN and value is not None]
            details.append(f"{record.get('bytes_sent', 0) / 1e6:.2f} MB sent")
            lines += _wrapped(details, indent="  ")
        return lines

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _label(self, name: str) -> str:
        field = self.fields.get(name)
        return field.label if field is not None and field.label else name.replace("_", " ")


def statistics(records: Sequence[Mapping[str, Any]], ranks: Sequence[Mapping[str, float]], wall: float) -> str:
    """The statistics block of a finished job.

    Parameters
    ----------
    records : list of dict
        The run's history (``iter`` and ``epoch`` records).
    ranks : list of dict
        Per rank, this job's ``train`` seconds and the seconds it spent ``waiting_messages``
        and ``waiting_collectives``, and its ``bytes`` sent.
    wall : float
        This job's training time (seconds).
    """
    epochs = [r for r in records if r["kind"] == "epoch"]
    times = [b["wall_time"] - a["wall_time"] for a, b in zip([{"wall_time": 0.0}] + epochs, epochs)]
    steps = sum(1 for r in records if r["kind"] == "iter")
    per_epoch = f", {_seconds(stats.median(times))} per epoch (median)" if times else ""
    lines = [f"statistics: {len(epochs)} epochs, {steps} steps{per_epoch}, this job {wall:.1f} s of training",
             "  rank   compute s   waiting for messages s   in collectives s   MB sent"]
    for r, row in enumerate(ranks):
        compute = row["train"] - row["waiting_messages"] - row["waiting_collectives"]
        lines.append(f"  {r:>4}   {compute:>9.2f}   {row['waiting_messages']:>22.2f}   "
                     f"{row['waiting_collectives']:>16.2f}   {row['bytes'] / 1e6:>7.2f}")
    iterations = _iterations([r for r in records if r["kind"] == "iter"])
    if iterations:
        lines.append("  iterations per solve (mean): " + ", ".join(f"{k} {v:.2f}" for k, v in iterations.items()))
    return "\n".join(lines)


def _iterations(iters: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean iterations per solve of each phase, from per-iteration histories (``r_0 … r_k``:
    k iterations) such as MGRIT's ``residual``."""
    counts: dict[str, list[int]] = {}
    for r in iters:
        history = r.get("residual")
        if isinstance(history, dict):
            for phase, values in history.items():
                if isinstance(values, list) and values:
                    counts.setdefault(phase, []).append(len(values) - 1)
    return {phase: sum(v) / len(v) for phase, v in counts.items()}


def _history(value: Mapping[str, Any]) -> str:
    """``{"forward": [r0, r1, r2], …}`` ↦ ``fwd 1.0e-02 3.1e-04 (0.031) 2.0e-05 (0.065); …``:
    each norm with its ratio to the one before."""
    out = []
    for phase, values in value.items():
        if not isinstance(values, list):
            continue
        items = []
        for k, v in enumerate(values):
            ratio = f" ({v / values[k - 1]:.3g})" if k and _finite(v) and _finite(values[k - 1]) and values[k - 1] \
                else ""
            items.append(f"{_number(v)}{ratio}")
        out.append(f"{_PHASE.get(phase, phase)} " + " ".join(items))
    return "; ".join(out)


def _brief(value: Any) -> str:
    """A headline figure: a number to three digits, a per-phase dict as its largest value
    (the slower of MGRIT's two solves)."""
    if isinstance(value, dict):
        values = [v[-1] if isinstance(v, list) and v else v for v in value.values()]
        numbers = [v for v in values if _finite(v)]
        return f"{max(numbers):.3g}" if numbers else "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.3g}"


def _wrapped(parts: Sequence[str], indent: str) -> list[str]:
    """``parts`` on lines of at most :data:`WIDTH` columns, two spaces apart, each line
    indented (a part longer than a line gets a line of its own)."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= WIDTH:
            lines[-1] += "  " + part
        else:
            lines.append(indent + part)
    return lines


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{_PHASE.get(k, k)} {_value(v[-1] if isinstance(v, list) and v else v)}"
                        for k, v in value.items())
    return _number(value)


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return f"{value:.4g}"


def _percent(value: Any) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) and _finite(value) else "-"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _seconds(t: float) -> str:
    return f"{t:.2f} s" if t < 100 else f"{t:.0f} s"
