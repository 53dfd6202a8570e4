"""Run configuration: defaults, a TOML file, command-line flags, validation.

Every key can be given in the TOML file (``key = value``) or as a flag (``--key value``,
dashes for underscores); flags override the file, the file overrides the defaults.  A
solver adds its own keys through its :attr:`~ocnet.solvers.Solver.options`.  Validation
happens before any training and is the same on every rank, so a bad configuration stops
every rank with the same single message.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from . import solvers
from .filters import FILTERS
from .options import ConfigError, Option

__all__ = ["COMMON", "ConfigError", "Option", "dump_toml", "given", "help_text", "load_plugins", "parse_argv",
           "read_toml", "resolve"]

# -- the keys every run accepts -----------------------------------------------------------------
COMMON: dict[str, Option] = {
    "problem": Option(str, "digits", "data set", choices=("peaks", "digits", "mnist", "cifar10", "cifar100")),
    "solver": Option(str, "serial", "training algorithm: a registered solver (those with options are listed below)"),
    "net": Option(str, "auto", "residual step (auto: conv for images but digits, dense otherwise)",
                  choices=("auto", "dense", "conv")),
    "layers": Option(int, 16, "number of residual layers N (all stages together)", min=1),
    "width": Option(int, 32, "state width of a dense network", min=1),
    "channels": Option(list, [16], "channels per stage of a convolutional network, e.g. 16,32,64", min=1),
    "final_time": Option(float, 1.0, "final layer-time T (step h = T/N per stage)", positive=True),
    "activation": Option(str, "auto", "activation (auto: tanh for dense, relu for conv)",
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
    "augment": Option(str, "auto", "data augmentation by crop and flip (auto: on for cifar)",
                      choices=("auto", "on", "off")),
    "filter": Option(str, "identity", "communication filter at rank boundaries"),
    "seed": Option(int, 0, "random seed (parameters, data split, batches)", min=0),
    "dtype": Option(str, "float32", "floating-point precision", choices=("float32", "float64")),
    "out": Option(str, "", "run directory (default runs/<problem>-<solver>-P<ranks>)"),
    "data_dir": Option(str, "", "directory holding mnist / cifar files"),
    "device": Option(str, "auto", "where each rank computes (auto: cuda:local_rank when CUDA is present)",
                     choices=("auto", "cpu", "cuda")),
    "cuda_aware": Option(str, "auto", "whether MPI takes GPU buffers (auto: detect)",
                         choices=("auto", "on", "off")),
    "threads": Option(int, 0, "torch threads per rank (0: the cores shared among the ranks of a node)", min=0),
    "checkpoint_every": Option(int, 0, "write a checkpoint every this many epochs and after the last one "
                               "(0: no checkpoints)", min=0),
    "resume": Option(str, "", "resume from this run directory's latest checkpoint"),
    "quiet": Option(bool, False, "no progress bar"),
    "plugin": Option(str, "", "modules (or .py files) to import first, comma-separated: solvers that "
                     "register themselves there become choices of --solver"),
}
CLI_ONLY = {"config": "a TOML file of keys (flags override it)"}


def solver_options(values: Mapping[str, Any]) -> dict[str, Option]:
    """The options of the solver ``values`` name (a composite solver's depend on its partner's)."""
    return solvers.get(values.get("solver", COMMON["solver"].default)).options_for(values)


def all_solver_keys() -> dict[str, list[str]]:
    """key ↦ the solvers that declare it."""
    owners: dict[str, list[str]] = {}
    for name, cls in solvers.available().items():
        for key in cls.options:
            owners.setdefault(key, []).append(name)
    return owners


def load_plugins(spec: str) -> list[str]:
    """Import the modules of ``spec`` (comma-separated module names or ``.py`` paths) so that
    the solvers they register become available; returns the module names.

    Raises
    ------
    ConfigError
        For a module that cannot be found or fails while importing.
    """
    names = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        try:
            if item.endswith(".py"):
                path = Path(item).resolve()
                name = f"ocnet_plugin_{path.stem}"
                if name not in sys.modules:
                    loader_spec = importlib.util.spec_from_file_location(name, path)
                    if loader_spec is None or loader_spec.loader is None or not path.exists():
                        raise ConfigError(f"plugin file {item!r} not found")
                    module = importlib.util.module_from_spec(loader_spec)
                    sys.modules[name] = module
                    try:
                        loader_spec.loader.exec_module(module)
                    except BaseException:
                        del sys.modules[name]
                        raise
            else:
                name = item
                importlib.import_module(item)
        except ConfigError:
            raise
        except ModuleNotFoundError as e:
            raise ConfigError(f"plugin {item!r} cannot be imported: {e}") from None
        except Exception as e:
            raise ConfigError(f"plugin {item!r} failed while importing: {type(e).__name__}: {e}") from None
        names.append(name)
    return names


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
    values = given(argv, file_values)
    registered = solvers.available()
    solver = values.get("solver", COMMON["solver"].default)
    if solver not in registered:
        raise ConfigError(f"unknown solver {solver!r}; registered: {', '.join(sorted(registered))}"
                          + _did_you_mean(str(solver), registered))
    schema = {**COMMON, **solver_options(values)}
    owners = all_solver_keys()
    for key in values:
        if key not in schema:
            if key in owners:
                raise ConfigError(f"{key} is an option of solver {' / '.join(owners[key])}, not of {solver!r}")
            raise ConfigError(f"unknown key {key!r}" + _did_you_mean(key, [*schema, *owners, *CLI_ONLY]))
    config = {key: opt.default for key, opt in schema.items()}
    for key, value in values.items():
        config[key] = schema[key].convert(key, value)
    if config["filter"] not in FILTERS:
        raise ConfigError(f"unknown filter {config['filter']!r}; choose from {', '.join(FILTERS)}")
    return config


def given(argv: Sequence[str] = (), file_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keys the file (``--config``) and the flags give, unconverted, after importing the
    plug-ins they name (so that their solvers are known)."""
    flags = parse_argv(argv)
    path = flags.pop("config", None)
    values = dict(file_values or {})
    if path is not None:
        values.update(read_toml(path))
    values.update(flags)
    load_plugins(COMMON["plugin"].convert("plugin", values.get("plugin", "")))
    return values


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
    """``--help``: every key with its default and choices, the common ones first, then each
    solver's own (an option a solver shares with one listed before it is named, not repeated)."""

    def row(key: str, opt: Option) -> str:
        default = ",".join(map(str, opt.default)) if isinstance(opt.default, list) else opt.default
        choices = f" {{{','.join(map(str, opt.choices))}}}" if opt.choices else ""
        return f"  --{key.replace('_', '-'):<22} {opt.help}{choices} [default: {default}]"

    registered = solvers.available()
    lines = ["usage: [mpirun -n P] python -m ocnet.run [--config FILE.toml] [--key value ...]", "",
             f"  --{'config FILE':<22} {CLI_ONLY['config']}"]
    lines += [row(key, opt) for key, opt in COMMON.items()]
    lines += ["", f"solvers: {', '.join(registered)}"]
    shown: dict[str, str] = {}  # key ↦ the solver under which it was listed
    for name, cls in registered.items():
        shared = sorted({shown[k] for k in cls.options if k in shown})
        own = [row(k, opt) for k, opt in cls.options.items() if k not in shown]
        shown.update({k: name for k in cls.options if k not in shown})
        if not own and not shared and not cls.help_extra():
            continue
        lines += ["", f"solver {name}:"]
        if shared:
            lines.append(f"  (and the options of {', '.join(shared)})")
        if cls.help_extra():
            lines.append(f"  ({cls.help_extra()})")
        lines += own
    return "\n".join(lines)
