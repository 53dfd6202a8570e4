"""Run configuration: defaults, a TOML file, command-line flags, validation.

Every key can be given in the TOML file (``key = value``) or as a flag (``--key value``,
dashes for underscores); flags override the file, the file overrides the defaults.  A
solver adds its own keys through its :attr:`~ocnet.solvers.Solver.options`.  Validation
happens before any training and is the same on every rank, so a bad configuration stops
every rank with the same single message.
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad configuration: the message says what and how to fix it."""


@dataclass(frozen=True)
class Option:
    """One configuration key: its type, default, help and admissible values."""

    type: type
    default: Any
    help: str
    choices: Sequence[Any] | None = None
    min: float | None = None
    max: float | None = None
    positive: bool = False  # strictly greater than 0

    def convert(self, key: str, value: Any) -> Any:
        """Check ``value`` (from TOML, or a string from the command line) and convert it."""
        if isinstance(value, str) and self.type is not str:
            value = _parse_string(key, value, self.type)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is list:
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{key} must be a list of integers, got {value!r}")
        elif not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ConfigError(f"{key} must be {_TYPE_NAMES[self.type]}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key} must be finite, got {v}")
            if self.positive and not v > 0:
                raise ConfigError(f"{key} must be positive, got {value!r}")
            if self.min is not None and v < self.min:
                raise ConfigError(f"{key} must be at least {self.min}, got {value!r}")
            if self.max is not None and v > self.max:
                raise ConfigError(f"{key} must be at most {self.max}, got {value!r}")
        return value


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list of integers"}


def _parse_string(key: str, text: str, kind: type) -> Any:
    try:
        if kind is bool:
            return {"true": True, "1": True, "yes": True, "on": True,
                    "false": False, "0": False, "no": False, "off": False}[text.lower()]
        if kind is list:
            return [int(part) for part in text.replace(" ", "").strip("[]").split(",") if part]
        return kind(text)
    except (KeyError, ValueError):
        raise ConfigError(f"{key} must be {_TYPE_NAMES[kind]}, got {text!r}") from None


# -- the keys every run accepts -----------------------------------------------------------------
COMMON: dict[str, Option] = {
    "problem": Option(str, "digits", "data set", choices=("peaks", "digits", "mnist", "cifar10", "cifar100")),
    "solver": Option(str, "serial", "training algorithm: a registered solver (those with options are listed below)"),
    "net": Option(str, "auto", "residual step: dense, conv, or auto (conv for images but digits, dense otherwise)",
                  choices=("auto", "dense", "conv")),
    "layers": Option(int, 16, "number of residual layers N (all stages together)", min=1),
    "width": Option(int, 32, "state width of a dense network", min=1),
    "channels": Option(list, [16], "channels per stage of a convolutional network, e.g. 16,32,64", min=1),
    "final_time": Option(float, 1.0, "final layer-time T (step h = T/N per stage)", positive=True),
    "activation": Option(str, "auto", "activation: auto (tanh dense, relu conv), tanh, relu, gelu",
                         choices=("auto", "tanh", "relu", "gelu")),
    "norm": Option(str, "group", "normalisation in convolutional steps (never couples samples)",
                   choices=("group", "instance", "none")),
    "epochs": Option(int, 20, "training epochs", min=1),
    "batch_size": Option(int, 64, "mini-batch size", min=1),
    "lr": Option(float, 3e-3, "learning rate", positive=True),
    "optimizer": Option(str, "adam", "optimiser", choices=("adam", "sgd")),
    "momentum": Option(float, 0.9, "SGD momentum", min=0.0, max=1.0),
    "weight_decay": Option(float, 0.0, "weight decay (L2 regularisation R(θ))", min=0.0),
    "schedule": Option(str, "constant", "learning-rate schedule over epochs", choices=("constant", "cosine", "step")),
    "augment": Option(str, "auto", "data augmentation (crop + flip): auto (on for cifar), on, off",
                      choices=("auto", "on", "off")),
    "filter": Option(str, "identity", "communication filter at rank boundaries"),
    "seed": Option(int, 0, "random seed (parameters, data split, batches)", min=0),
    "dtype": Option(str, "float32", "floating-point precision", choices=("float32", "float64")),
    "out": Option(str, "", "run directory (default runs/<problem>-<solver>-P<ranks>)"),
    "data_dir": Option(str, "", "directory holding mnist / cifar files"),
    "device": Option(str, "auto", "auto (cuda:local_rank when CUDA is present), cpu, cuda",
                     choices=("auto", "cpu", "cuda")),
    "cuda_aware": Option(str, "auto", "whether MPI takes GPU buffers: auto (detect), on, off",
                         choices=("auto", "on", "off")),
    "threads": Option(int, 0, "torch threads per rank (0: the cores shared among the ranks of a node)", min=0),
    "checkpoint_every": Option(int, 0, "write a checkpoint every this many epochs (0: only at the end if resume is used)",
                               min=0),
    "resume": Option(str, "", "resume from this run directory's latest checkpoint"),
    "quiet": Option(bool, False, "no progress bar"),
}
CLI_ONLY = {"config": "a TOML file of keys (flags override it)"}


def solver_options(solver: str) -> dict[str, Option]:
    from .solvers import get
    return get(solver).options


def all_solver_keys() -> dict[str, list[str]]:
    """key ↦ the solvers that accept it."""
    from .solvers import SOLVERS
    owners: dict[str, list[str]] = {}
    for name, cls in SOLVERS.items():
        for key in cls.options:
            owners.setdefault(key, []).append(name)
    return owners


def parse_argv(argv: Sequence[str]) -> dict[str, Any]:
    """``['--batch-size', '32', '--quiet']`` ↦ ``{'batch_size': '32', 'quiet': 'true'}``
    (values stay strings; :func:`resolve` converts them)."""
    out: dict[str, Any] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: flags look like --key value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is None or (nxt.startswith("--") and not _is_number(nxt)):
                value = "true"  # a bare flag: a boolean switched on
            else:
                value, i = nxt, i + 1
        out[key] = value
        i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def resolve(argv: Sequence[str] = (), file_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resolved configuration: defaults ← TOML file (``--config``) ← flags.

    Raises
    ------
    ConfigError
        For an unknown key (with a did-you-mean), a value of the wrong type or range, an
        unknown solver or filter, or an unreadable file.
    """
    flags = parse_argv(argv)
    path = flags.pop("config", None)
    values = dict(file_values or {})
    if path is not None:
        values.update(read_toml(path))
    values.update(flags)
    solver = values.get("solver", COMMON["solver"].default)
    from .solvers import SOLVERS
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; registered: {', '.join(sorted(SOLVERS))}"
                          + _did_you_mean(str(solver), SOLVERS))
    schema = {**COMMON, **solver_options(solver)}
    owners = all_solver_keys()
    for key in values:
        if key not in schema:
            if key in owners:
                raise ConfigError(f"{key} is an option of solver {' / '.join(owners[key])}, not of {solver!r}")
            raise ConfigError(f"unknown key {key!r}" + _did_you_mean(key, [*schema, *owners, *CLI_ONLY]))
    config = {key: opt.default for key, opt in schema.items()}
    for key, value in values.items():
        config[key] = schema[key].convert(key, value)
    from .filters import FILTERS
    if config["filter"] not in FILTERS:
        raise ConfigError(f"unknown filter {config['filter']!r}; choose from {', '.join(FILTERS)}")
    return config


def _did_you_mean(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def read_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {str(path)!r} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"configuration file {str(path)!r} is not valid TOML: {e}") from None
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(f"configuration file {str(path)!r}: tables are not used, found [{nested[0]}]")
    return data


def dump_toml(config: Mapping[str, Any]) -> str:
    """The configuration as TOML text (flat keys; readable by :func:`read_toml`)."""
    lines = []
    for key, value in config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float, list)):
            text = json.dumps(value)
        else:
            text = json.dumps(str(value))  # JSON string escapes are valid TOML basic strings
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def help_text() -> str:
    """``--help``: every key with its default, common ones first, then each solver's."""
    from .solvers import SOLVERS

    def block(options: Mapping[str, Option]) -> list[str]:
        rows = []
        for key, opt in options.items():
            default = ",".join(map(str, opt.default)) if isinstance(opt.default, list) else opt.default
            rows.append(f"  --{key.replace('_', '-'):<20} {opt.help} [default: {default}]")
        return rows

    lines = ["usage: [mpirun -n P] python -m ocnet.run [--config FILE.toml] [--key value ...]", "",
             "  --config FILE          a TOML file of keys (flags override it)"]
    lines += block(COMMON)
    lines += ["", f"solvers: {', '.join(sorted(SOLVERS))}"]
    for name, cls in sorted(SOLVERS.items()):
        if cls.options:
            lines += ["", f"solver {name}:"] + block(cls.options)
    return "\n".join(lines)
