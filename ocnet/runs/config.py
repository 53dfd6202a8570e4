"""Run configuration: defaults, a TOML file, command-line flags, validation.

Every key can be given in the TOML file (``key = value``) or as a flag (``--key value``,
dashes for underscores); flags override the file, the file overrides the defaults.  A
solver adds its own keys through its :attr:`~ocnet.solvers.Solver.options`.  Validation
happens before any training and is the same on every rank, so a bad configuration stops
every rank with the same single message.
"""
from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import solvers
from ..model import data, kinds
from ..model.options import ConfigError, Option, show
from ..ranks.compress import COMPRESSORS
from ..ranks.filters import FILTERS
from . import allocator, nested, tomlfile
from .plugins import idle_plugins, load_plugins
from .tomlfile import MAX_TOML_BYTES, dump_toml, toml_value

__all__ = ["COMMON", "MAX_TOML_BYTES", "RESUMABLE", "ConfigError", "Option", "differences", "dump_toml", "given",
           "help_text", "idle_plugins", "load_plugins", "parse_argv", "read_toml", "resolve", "toml_value"]


class _Plots(Option):
    """``plots``: ``all`` or ``none``.  The key was a boolean, and configuration files, scripts
    and the ``config.toml`` of earlier runs give it as one: ``true`` means ``all``, ``false``
    ``none`` (and the other words a boolean option takes, ``yes``/``no``, ``on``/``off``,
    ``1``/``0``)."""

    def convert(self, key: str, value: Any) -> Any:
        if isinstance(value, bool):
            value = "all" if value else "none"
        elif isinstance(value, str):
            value = _PLOTS_WORDS.get(value.lower(), value)
        if value not in (self.choices or ()):
            raise ConfigError(f"{key} must be one of all, none (or true, false); got {show(value)}")
        return super().convert(key, value)


class _Levels(Option):
    """``nested`` and ``nested_epochs``: a list of integers, empty by default (nested iteration
    off), as the ``config.toml`` of a run writes it (``[]``) and reads it back, and as an
    empty flag (``--nested ""``) gives it."""

    def convert(self, key: str, value: Any) -> Any:
        return [] if value in ([], "") else super().convert(key, value)


_PLOTS_WORDS = {**dict.fromkeys(("true", "yes", "on", "1"), "all"),
                **dict.fromkeys(("false", "no", "off", "0"), "none")}


# -- the keys every run accepts -----------------------------------------------------------------
COMMON: dict[str, Option] = {
    "problem": Option(str, "digits", "data set: a built-in one, arrays (your own, from --data) or one a "
                      "plug-in registers (listed below)"),
    "solver": Option(str, "serial", "training algorithm: a registered solver (those with options are listed below)"),
    "net": Option(str, "auto", "residual step: dense, conv, conv1d, transformer or one a plug-in registers "
                  "(auto: transformer for token sequences, conv for images but digits, conv1d for signals, "
                  "dense otherwise)"),
    # Every layer is a Python module of its own (some kilobytes each, built on every rank).
    "layers": Option(int, 16, "number of residual layers N (all stages together)", min=1, max=100_000),
    "width": Option(int, 32, "state width of a dense network, token width of a transformer", min=1),
    "heads": Option(int, 4, "attention heads of a transformer (they split the width)", min=1),
    "patch": Option(int, 0, "patch size of a vision transformer (0: the largest leaving at least 16 patches)",
                    min=0),
    "channels": Option(list, [16, 32], "channels per stage of a convolutional network (a strided transition "
                       "between stages halves the resolution), e.g. 16,32,64", min=1),
    "final_time": Option(float, 1.0, "final layer-time T (step h = T/N per stage)", positive=True),
    "activation": Option(str, "auto", "activation (auto: tanh for dense, relu for conv, gelu for transformer)",
                         choices=("auto", "tanh", "relu", "gelu")),
    "dropout": Option(float, 0.0, "dropout rate in every residual step; masks keyed by (seed, epoch, sample, "
                      "layer), so that P, micro-batches and solver leave them unchanged", min=0.0, max=0.9),
    "norm": Option(str, "group", "normalisation in convolutional steps (batch: statistics of each micro-batch, "
                   "running statistics for evaluation; the others never couple samples)",
                   choices=("group", "instance", "batch", "none")),
    "epochs": Option(int, 20, "training epochs", min=1, max=1_000_000),
    "batch_size": Option(int, 64, "mini-batch size", min=1),
    "val_split": Option(float, 0.0, "fraction of the training set held out for validation: epochs report "
                        "validation accuracy, the best epoch's model is kept as best.pt, the test set is "
                        "evaluated once at the end", min=0.0, max=0.9),
    "epoch_test": Option(bool, False, "with --val-split: evaluate the test set after every epoch too"),
    "data_parallel": Option(int, 1, "data groups D: the P ranks form D groups of P/D layer ranks, each "
                            "training on its share of every mini-batch (gradients averaged over the groups)",
                            min=1),
    "compress": Option(str, "none", "compression of the gradient exchange between data groups "
                       "(none, topk, adacomp; docs/compression.rst)"),
    "compress_ratio": Option(float, 0.01, "--compress topk: the share of each tensor's entries sent per step",
                             positive=True, max=1.0),
    "compress_exchange": Option(str, "auto", "how compressed gradients combine: gather every rank's sparse "
                                "messages, decode them into the dense allreduce, or auto (gather only large "
                                "buffers of small messages)", choices=("auto", "gather", "dense")),
    "compress_bin": Option(int, 0, "--compress adacomp: the bin length (0: 50 for convolution kernels, "
                           "500 for other tensors)", min=0),
    "limit_batches": Option(int, 0, "train on at most this many batches per epoch (0: all; a smoke run)", min=0),
    "max_steps": Option(int, 0, "stop after this many optimiser steps (0: no limit; a smoke run)", min=0),
    "nested": _Levels(list, [], "nested iteration in depth (docs/multilevel.rst): coarsening factors of --layers, "
                      "strictly decreasing to 1, e.g. 4,2,1 trains N/4 layers, interpolates to N/2, trains, "
                      "interpolates to N, trains (empty: off)", min=1),
    "nested_epochs": _Levels(list, [], "--nested: the epochs of each level but the last, e.g. 2,2; the last "
                             "trains until --epochs (the total over all levels)", min=1),
    "nested_interpolate": Option(str, "linear", "--nested: how a level's residual steps become the next "
                                 "level's, as a field theta(t) in layer time", choices=("constant", "linear")),
    "head": Option(str, "sgd", "the classifier after training: sgd (as trained), or convex: its last linear map "
                   "also refitted as a two-layer ReLU network by the convex program, scored beside it and "
                   "saved as convex_head.pt (docs/convex.rst)", choices=("sgd", "convex"), resumable=True),
    "convex_patterns": Option(int, 8, "--head convex: activation patterns sampled for the programs", min=1,
                              resumable=True),
    "convex_beta": Option(float, 0.1, "--head convex: the programs' weight decay beta (of the loss summed over "
                          "the samples)", min=0.0, resumable=True),
    "convex_loss": Option(str, "squared", "--head convex: the loss of each class's one-vs-rest program",
                          choices=("squared", "logistic"), resumable=True),
    "convex_eps": Option(float, 0.0, "--head convex: the l-infinity radius of the robust program, on the "
                         "standardised features (0: the nominal program; > 0 is solved by CVXPY)", min=0.0,
                         resumable=True),
    "convex_solver": Option(str, "admm", "--head convex: ADMM in torch on the run's device, or CVXPY with "
                            "Clarabel (exact, small programs)", choices=("admm", "cvxpy"), resumable=True),
    "convex_tol": Option(float, 1e-4, "--head convex: ADMM's stopping tolerance", positive=True, resumable=True),
    "convex_samples": Option(int, 0, "--head convex: fit on this many training samples, a seeded random subset "
                             "(0: all)", min=0, resumable=True),
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
    "data_dir": Option(str, "", "directory holding mnist / cifar files, and where mnist1d keeps its generated "
                   "arrays (default ~/.cache/ocnet)"),
    "data": Option(str, "", "the arrays of --problem arrays: a .npz file (x_train, y_train, x_test, y_test; "
                   "x_val, y_val optional) or a folder of those .npy files"),
    "device": Option(str, "auto", "where each rank computes (auto: cuda:local_rank when CUDA is present)",
                     choices=("auto", "cpu", "cuda")),
    "cuda_aware": Option(str, "auto", "whether MPI takes GPU buffers (auto: detect)",
                         choices=("auto", "on", "off")),
    "threads": Option(int, 0, "torch threads per rank (0: OMP_NUM_THREADS if set, else 1 for dense networks "
                      "and the cores shared among the ranks of a node for convolutional ones)",
                      min=0, max=1024),
    "malloc": Option(str, "auto", "glibc's allocator thresholds in each rank (tuned: raised with mallopt, so freed "
                     "activations stay with the process instead of page-faulting again; glibc: as glibc sets them; "
                     "auto: OCNET_MALLOC if set, glibc where GLIBC_TUNABLES sets glibc.malloc, else "
                     f"{allocator.DEFAULT}; no effect without glibc)", choices=allocator.CHOICES, resumable=True),
    "checkpoint_every": Option(int, 0, "write a checkpoint every this many epochs and after the last one "
                               "(0: no checkpoints)", min=0),
    "resume": Option(str, "", "resume from this run directory's latest checkpoint"),
    "overwrite": Option(bool, False, "replace an existing run directory's files instead of refusing to start into it"),
    # A year at most: longer waits overflow the timeouts of threading and of the OS.
    "stall_timeout": Option(float, 600.0, "seconds without progress on any rank after which the job ends naming "
                            "the stuck rank (0: never)", min=0.0, max=365 * 24 * 3600.0),
    "quiet": Option(bool, False, "print only errors and the final summary (no epoch lines, bar or statistics)"),
    "log_every": Option(int, 0, "rank 0 prints a line (loss, seconds) every this many steps (0: a line per "
                        "epoch only)", min=0),
    "verbose": Option(bool, False, "rank 0 prints each step's per-iteration histories (MGRIT's residual norms "
                      "and their ratios)"),
    "timeline_steps": Option(int, 4, "record the per-rank timeline (compute, waits, sends) of this many steps of "
                             "every epoch, from its second step, into <out>/timeline/ (0: off)", min=0, max=10_000),
    "plots": _Plots(str, "all", "the run directory's figures drawn when the job ends (none: a short job ends a "
                    "second or two sooner, and python -m ocnet.plot RUN_DIR draws them later; true and false "
                    "mean all and none)", choices=("all", "none")),
    "plugin": Option(str, "", "modules (or .py files) to import first, comma-separated: the solvers, data "
                     "sets and step kinds they register become choices of --solver, --problem and --net"),
}
CLI_ONLY = {"config": "a TOML file of keys (flags override it)"}

# The keys whose value may change when a run is resumed (how long, how often to save, where
# and how it runs); every other key must equal the original run's, or the resumed run
# would not continue the same training.
RESUMABLE = frozenset({"epochs", "checkpoint_every", "quiet", "log_every", "verbose", "resume", "out", "overwrite",
                       "stall_timeout", "data_parallel",
                       "threads", "device", "cuda_aware", "data_dir", "data", "plugin", "timeline_steps", "plots"})


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
    """The resolved configuration: defaults ← the resumed run's ``config.toml`` (``--resume``)
    ← TOML file (``--config``) ← flags.

    Raises
    ------
    ConfigError
        For an unknown key (with a did-you-mean), a value of the wrong type or range, an
        unknown solver or filter, or an unreadable file; a message about a key the file
        gives names the file.  Never another exception for any argv or file content.
    """
    values, origin, inherited = _gather(argv, file_values)
    registered = solvers.available()
    solver = _convert(COMMON["solver"], "solver", values.get("solver", COMMON["solver"].default), origin)
    if solver not in registered:
        raise _at(origin, "solver", ConfigError(f"unknown solver {solver!r}; registered: "
                                                f"{', '.join(sorted(registered))}" + _did_you_mean(solver, registered)))
    if "solver" in values:
        values["solver"] = solver
    schema = {**COMMON, **solver_options(values)}
    owners = all_solver_keys()
    for key in values:
        if key in schema:
            continue
        if key in CLI_ONLY:
            error = ConfigError(f"{key} is a command-line flag only (--{key} FILE), not a key of a configuration file")
        elif key in owners:
            error = ConfigError(f"{key} is an option of solver {' / '.join(owners[key])}, not of {solver!r}")
        else:
            error = ConfigError(f"unknown key {show(key)}" + _did_you_mean(key, [*schema, *owners, *CLI_ONLY]))
        raise _at(origin, key, error)
    config = Config({key: opt.default for key, opt in schema.items()})
    config.given = frozenset(values) - inherited
    for key, value in values.items():
        config[key] = _convert(schema[key], key, value, origin)
    if config["filter"] not in FILTERS:
        error = ConfigError(f"unknown filter {config['filter']!r}; choose from {', '.join(FILTERS)}")
        raise _at(origin, "filter", error)
    if config["compress"] not in COMPRESSORS:
        error = ConfigError(f"unknown compressor {config['compress']!r}; choose from {', '.join(COMPRESSORS)}")
        raise _at(origin, "compress", error)
    if config["compress"] != "none" and config["data_parallel"] == 1:
        raise _at(origin, "compress", ConfigError(
            f"--compress {config['compress']} compresses the gradient exchange between data groups, and this run "
            "has one group: give --data-parallel D > 1 (layer messages are not compressed; --filter shrinks them)"))
    _check_steps(config, origin)
    try:
        nested.check(config)
    except ConfigError as e:
        key = str(e).partition(":")[0]
        raise _at(origin, key, e) from None
    nets = kinds.available()
    if config["net"] not in nets:
        raise _at(origin, "net", ConfigError(f"unknown net {config['net']!r}; choose from {', '.join(nets)}"
                                             + _did_you_mean(config["net"], nets)))
    problems = data.available()
    if config["problem"] not in problems:
        raise _at(origin, "problem", ConfigError(f"unknown problem {config['problem']!r}; choose from "
                                                 f"{', '.join(problems)}" + _did_you_mean(config["problem"], problems)))
    if config["data"] and config["problem"] != "arrays":
        raise _at(origin, "data", ConfigError(f"--data names the arrays of --problem arrays; this run's problem "
                                              f"is {config['problem']!r}"))
    for key in PATHS:
        config[key] = _at_home(config[key], key, origin)
    return config


#: The keys that name a path: ``~`` in them is the home directory, as in a shell (which does
#: not expand it in ``--out=~/x``, nor in a TOML file).
PATHS = ("out", "resume", "data_dir", "data")


def _at_home(value: str, key: str, origin: Mapping[str, str]) -> str:
    """``value`` with a leading ``~`` or ``~user`` expanded; never a path that starts with a
    literal ``~`` (which would make a directory of that name)."""
    if not value.startswith("~"):
        return value
    expanded = os.path.expanduser(value)
    if expanded.startswith("~"):
        raise _at(origin, key, ConfigError(f"{key}: cannot expand {value!r}: no such home directory "
                                           "(write ./~ for a directory named ~)"))
    return expanded


class Config(dict[str, Any]):
    """A resolved configuration (:func:`resolve`): every key and its value, and in
    :attr:`given` the keys that the file and the flags gave."""

    given: frozenset[str] = frozenset()


#: The largest number of each ``--dtype``.
LARGEST = {"float32": 3.4028234663852886e38, "float64": sys.float_info.max}


def _check_steps(config: Mapping[str, Any], origin: Mapping[str, str]) -> None:
    """Refuse a learning rate or weight decay that the optimiser cannot apply in the run's
    dtype: torch refuses to scale a tensor by a number beyond its dtype's range (Adam's first
    step scales by lr / (1 − β₁) = 10 × lr), which every rank would meet in its first step."""
    dtype, largest = config["dtype"], LARGEST[config["dtype"]]
    scale, step = (10.0, "Adam's first step is 10 × lr") if config["optimizer"] == "adam" else (1.0, "SGD steps by lr")
    if config["lr"] * scale > largest:
        raise _at(origin, "lr", ConfigError(
            f"lr {config['lr']:g} is too large for {dtype}: {step}, beyond the largest {dtype} number "
            f"{largest:.4g}; use an lr of at most {largest / scale:.4g}"))
    if config["weight_decay"] > largest:
        raise _at(origin, "weight_decay", ConfigError(
            f"weight_decay {config['weight_decay']:g} is beyond the largest {dtype} number {largest:.4g}"))


def check_filter(name: str, net: str) -> None:
    """Refuse a filter that would leave every state of a ``net`` network as it is: a spatial
    one (``downsample*``) acts on image states, which only a convolutional network has."""
    if FILTERS[name].spatial and net != "conv":
        raise ConfigError(f"filter {name} averages windows of image states, and a {net} network's states have "
                          "none: it would send every state whole; use --filter identity (or --net conv on images)")


def without_effect(config: Mapping[str, Any], *, net: str, image: bool, device: str) -> list[str]:
    """The options the file or the flags give (:attr:`Config.given`) that change nothing in a
    run of a ``net`` network on ``image`` data, on ``device`` (``"cpu"`` or ``"cuda"``): one
    line each, saying why, for a warning."""
    keys: frozenset[str] = getattr(config, "given", frozenset())
    lines = []
    if "patch" in keys and not (net == "transformer" and image):
        what = "a transformer on token sequences" if net == "transformer" else f"a {net} network"
        lines.append(f"--patch has no effect: it is the patch size of a vision transformer "
                     f"(--net transformer on images), and this run trains {what}")
    convex = sorted(k for k in keys if k.startswith("convex_"))
    if config["head"] != "convex" and convex:
        lines.append(f"--{convex[0].replace('_', '-')} has no effect without --head convex: it configures the "
                     "convex head's programs")
    if "nested_interpolate" in keys and not config["nested"]:
        lines.append("--nested-interpolate has no effect without --nested: it is how nested iteration "
                     "hands a level's parameters to the next")
    if "norm" in keys and net in ("dense", "transformer"):
        lines.append(f"--norm has no effect: it normalises the steps of a convolutional network, "
                     f"and this run trains a {net} network")
    if ("channels" in keys and len(config["channels"]) > 1 and net not in kinds.BUILT_IN
            and kinds.get(net).transition is None):
        lines.append(f"--channels {','.join(map(str, config['channels']))} makes no stages: step kind {net!r} "
                     "registers no transition between stages, so this run trains one stage")
    if "epoch_test" in keys and config["epoch_test"] and not config["val_split"]:
        lines.append("--epoch-test has no effect without --val-split: without a validation set the test "
                     "set is evaluated after every epoch anyway")
    if "cuda_aware" in keys and config["cuda_aware"] != "auto" and device == "cpu":
        lines.append(f"--cuda-aware {config['cuda_aware']} has no effect: this run computes on the CPU, "
                     "so no GPU buffer crosses a rank boundary")
    if "compress_ratio" in keys and config["compress"] != "topk":
        lines.append(f"--compress-ratio has no effect with --compress {config['compress']}: it is top-k's share")
    elif "compress_bin" in keys and config["compress"] != "adacomp":
        lines.append(f"--compress-bin has no effect with --compress {config['compress']}: it is AdaComp's bin length")
    if "compress_exchange" in keys and config["compress"] == "none":
        lines.append("--compress-exchange has no effect with --compress none: without compression every exchange "
                     "is the dense allreduce")
    pipeline = config.get("pipeline")
    if "ahead" in keys and pipeline in ("interleaved", "v"):
        lines.append(f"--ahead has no effect with --pipeline {pipeline}: running forwards ahead is for the "
                     "schedules of one slice of layers per rank (1f1b, zb)")
    if "virtual_stages" in keys and pipeline in ("1f1b", "zb"):
        lines.append(f"--virtual-stages has no effect with --pipeline {pipeline}: it is the stages per rank of "
                     "--pipeline interleaved")
    for item in idle_plugins(config["plugin"]):
        lines.append(f"--plugin {item}: importing it registered no solver, data set or step kind")
    return lines


def given(argv: Sequence[str] = (), file_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keys the file (``--config``) and the flags give, unconverted, after importing the
    plug-ins they name (so that their solvers are known)."""
    values, _, inherited = _gather(argv, file_values)
    return {key: value for key, value in values.items() if key not in inherited}


def _gather(argv: Sequence[str], file_values: Mapping[str, Any] | None
            ) -> tuple[dict[str, Any], dict[str, str], frozenset[str]]:
    """:func:`given` with the keys of the run ``--resume`` continues that neither gives
    (:func:`_resumed_run`); for each key a file gives (and no flag overrides) the words that
    name the file, for messages about it; and which keys came from the resumed run."""
    flags = parse_argv(argv)
    path = flags.pop("config", None)
    values = dict(file_values or {})
    origin: dict[str, str] = {}
    if path is not None:
        path = os.path.expanduser(path)  # --config=~/x.toml: no shell expands that ~
        from_file = read_toml(path)
        values.update(from_file)
        origin = {key: f"configuration file {str(path)!r}" for key in from_file if key not in flags}
    values.update(flags)
    inherited = {key: value for key, value in _resumed_run(values.get("resume")).items() if key not in values}
    values.update(inherited)
    where = f"the resumed run's {str(Path(str(values.get('resume'))) / 'config.toml')!r}"
    origin.update(dict.fromkeys(inherited, where))
    plugin = _convert(COMMON["plugin"], "plugin", values.get("plugin", ""), origin)
    try:
        load_plugins(plugin)
    except ConfigError as e:
        raise _at(origin, "plugin", e) from None
    return values, origin, frozenset(inherited)


def _resumed_run(resume: Any) -> dict[str, Any]:
    """The keys of the run ``--resume`` continues, from its ``config.toml``: what the file and
    the flags leave out is the run's own, so that ``--resume RUN_DIR`` alone continues a run
    as it was set up, whatever the defaults are now (where it runs, ``out`` and
    ``overwrite``, is the resuming job's).  Nothing when there is no such file: the claim
    of the run directory then says why it cannot be resumed."""
    if not isinstance(resume, str) or not resume or "\x00" in resume:  # no such path: the claim says so
        return {}
    path = Path(os.path.expanduser(resume)) / "config.toml"
    if not path.is_file():
        return {}
    return {key: value for key, value in read_toml(path).items() if key not in ("resume", "out", "overwrite")}


def _convert(option: Option, key: str, value: Any, origin: Mapping[str, str]) -> Any:
    try:
        return option.convert(key, value)
    except ConfigError as e:
        raise _at(origin, key, e) from None


def _at(origin: Mapping[str, str], key: str, error: ConfigError) -> ConfigError:
    """``error``, prefixed with the file that gave ``key`` if a file did."""
    return ConfigError(f"{origin[key]}: {error}") if key in origin else error


def _did_you_mean(word: str, candidates) -> str:
    others = [c for c in candidates if c != word]  # a suggestion of the same word helps nobody
    close = difflib.get_close_matches(word, others, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def read_toml(path: str | Path) -> dict[str, Any]:
    """The keys of the TOML file ``path`` (:func:`ocnet.runs.tomlfile.read_toml`), refusing
    the keys that are command-line flags only (``config``)."""
    values = tomlfile.read_toml(path)
    for key in CLI_ONLY:
        if key in values:
            raise ConfigError(f"configuration file {str(path)!r}: {key} is a command-line flag only (--{key} "
                              "FILE), not a key of the file")
    return values


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys outside :data:`RESUMABLE` (and not declared ``resumable``) on which two
    configurations differ.

    Parameters
    ----------
    old : mapping
        The original run's keys, e.g. :func:`read_toml` of its ``config.toml``
        (unconverted; a key missing there counts as its default).
    new : mapping
        The configuration of the run that resumes it (as :func:`resolve` returns it).

    Returns
    -------
    list of str
        ``"key: old → new"`` for each differing key (e.g. ``"dtype: float64 → float32"``,
        ``"channels: [8, 16] → [16]"``; a string in quotes only when empty or padded), in
        the order of ``new``'s keys then ``old``'s; empty when the run may resume.
    """
    schema = {**_schema(old), **_schema(new)}
    lines = []
    for key in dict.fromkeys([*new, *old]):
        option = schema.get(key)
        if key in RESUMABLE or key in CLI_ONLY or (option is not None and option.resumable):
            continue
        a, b = _value(old, key, option), _value(new, key, option)
        if a != b or type(a) is not type(b):
            lines.append(f"{key}: {_text(a)} → {_text(b)}")
    return lines


_ABSENT = object()


def _schema(values: Mapping[str, Any]) -> dict[str, Option]:
    try:
        return {**COMMON, **solver_options(values)}
    except (KeyError, TypeError, ConfigError):  # a solver (or partner) not registered here
        return dict(COMMON)


def _value(values: Mapping[str, Any], key: str, option: Option | None) -> Any:
    """The converted value of ``key``, its default when missing; a value that does not
    convert is compared as it is (it differs from any valid one)."""
    if key not in values:
        return option.default if option is not None else _ABSENT
    if option is None:
        return values[key]
    try:
        return option.convert(key, values[key])
    except ConfigError:
        return values[key]


def _text(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, str) and value.strip() == value and value.isprintable() and value:
        text = value  # quotes only where they show something: "" or spaces at an end
    else:
        try:
            text = toml_value(value)
        except (ValueError, RecursionError):  # a value of a hand-edited file, too large to write
            text = show(value)
    return text if len(text) <= 60 else text[:59] + "…"


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
    lines += ["", f"problems: {', '.join(data.available())}", f"nets: {', '.join(kinds.available())}",
              f"solvers: {', '.join(registered)}"]
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
