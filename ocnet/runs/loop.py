"""Training in a loop of your own: what ``python -m ocnet.run`` sets up — the data, the
network, the solver on this rank's slice, the checkpoints — stepped by your script, under
``mpiexec`` or on one process::

    import torch
    from ocnet import Training

    t = Training(["--solver", "mgrit", "--layers", "8"],            # the CLI's keys
                 optimizer=lambda params: torch.optim.SGD(params, lr=0.05))
    for epoch in range(3):
        t.begin_epoch(epoch)
        for x, y, index in t.batches(epoch):
            record = t.step(x, y, index)        # this rank's record
        t.end_epoch(epoch)
        t.save("ckpt", epoch)                   # the CLI's checkpoint format

A loop that calls these in this order computes what ``python -m ocnet.run`` computes with the
same keys: the same batches, learning rates, dropout masks and solver calls.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from ..model import batchnorm, dropout
from ..model.data import Dataset, batches, load
from ..model.problem import Problem, from_config
from ..ranks import comm as comm_mod
from ..solvers import Solver
from ..solvers import get as get_solver
from ..solvers.records import Record
from . import checkpoint
from .config import ConfigError, resolve
from .train import evaluate, lr_schedule, steps_per_epoch, training_batch


class Training:
    """One rank's part of a training run of the configuration ``argv`` (flags as for
    ``python -m ocnet.run``) and ``keys`` (as a TOML file's), on the ranks of ``comm``
    (default: every rank of the job).

    ``optimizer`` makes an optimiser of a list of parameters (default: the configuration's
    ``optimizer``, ``lr``, ``momentum``, ``weight_decay`` and ``schedule``); the solver calls
    it for the parameters it updates, and its learning rate is then yours to set. ``model``,
    a :class:`~ocnet.model.problem.Problem` of your own modules, replaces the network the
    configuration describes. Every rank must build the same, and call the methods below in
    the same order. Data groups (``data_parallel``) are the command line's alone.

    Attributes
    ----------
    config : dict
        The resolved configuration.
    data : Dataset
        On the training device, in the training dtype.
    problem : Problem
        The whole network (this rank trains only its slice; :meth:`model_state` gathers it).
    solver : Solver
        On this rank's slice (``solver.network``).
    """

    def __init__(self, argv: Sequence[str] = (), *, optimizer: Callable[[Iterable[torch.nn.Parameter]],
                 torch.optim.Optimizer] | None = None, model: Problem | None = None,
                 comm: comm_mod.Comm | None = None, **keys: Any) -> None:
        from .job import build_solver, pick_device

        self.comm = comm if comm is not None else comm_mod.world()
        self.config = config = resolve(list(argv), keys)
        if config["data_parallel"] != 1:
            raise ConfigError("a loop of your own trains one data group: leave data_parallel at 1")
        self.device = pick_device(config["device"], self.comm)
        dtype = getattr(torch, config["dtype"])
        data = load(config["problem"], config["data_dir"] or None, config["seed"], config["val_split"],
                    config["data"] or None)
        self.data: Dataset = data.to(self.device, dtype)
        if model is not None and (tuple(model.input_shape), model.n_classes) != (data.input_shape, data.n_classes):
            raise ConfigError(f"the model given takes samples {tuple(model.input_shape)} into {model.n_classes} "
                              f"classes; {config['problem']} has {data.input_shape} and {data.n_classes}")
        self.problem: Problem = model if model is not None else from_config(config, data.input_shape,
                                                                            data.n_classes)
        cls = get_solver(config["solver"])
        partition = cls.partition(self.problem.n_layers, self.comm.size, config)
        network = self.problem.local(partition, self.comm.rank).to(self.device)
        self.solver: Solver = build_solver(cls, network, self.comm, config, self.device, optimizer)
        # with an optimiser of the user's, its learning rate is the user's too
        self._lr = lr_schedule(config["schedule"], config["lr"], config["epochs"]) if optimizer is None else None
        self._augment = config["augment"] == "on" or (config["augment"] == "auto"
                                                      and config["problem"].startswith("cifar"))
        self.epoch = 0

    def begin_epoch(self, epoch: int) -> Record:
        """Set the epoch's learning rate (``lr`` and ``schedule``; not with an ``optimizer``
        of your own) and let the solver prepare the epoch (the penalty methods' sweep of the
        training set); returns this rank's record of it."""
        self.epoch = epoch
        if self._lr is not None:
            self.solver.set_lr(self._lr(epoch))
        everyone = torch.arange(len(self.data.y_train))
        with dropout.samples(self.config["seed"], epoch, everyone), batchnorm.frozen(self.solver.network):
            return self.solver.begin_epoch(epoch, self.data.x_train, self.data.y_train)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The epoch's mini-batches ``(x, y, index)`` (``index``: the samples' rows of the
        training set), shuffled by ``seed`` and ``epoch``, augmented where the run would be."""
        c = self.config
        n = len(self.data.y_train)
        augmented = self._augment and self.data.is_image and self.solver.augments(epoch)
        for b, idx in enumerate(batches(n, c["batch_size"], c["seed"], epoch)):
            if b >= steps_per_epoch(n, c["batch_size"], c["limit_batches"]):
                return
            x, y = training_batch(self.data, idx, c["seed"], epoch, b, augmented)
            yield x, y, idx

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        """One optimiser step of the solver on a mini-batch; returns this rank's record (the
        loss is on the rank that holds the classifier)."""
        with dropout.samples(self.config["seed"], self.epoch, index), batchnorm.one_update(self.solver.network):
            return self.solver.step(x, y, index)

    def end_epoch(self, epoch: int) -> Record:
        """The solver's end of the epoch (accuracy control, multipliers); its record."""
        return self.solver.end_epoch(epoch)

    def evaluate(self, split: str = "test") -> tuple[float, float]:
        """``(accuracy, mean loss)`` of the network on the ``test`` (or ``val``, ``train``)
        samples, known on every rank."""
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        return evaluate(self.solver, self.comm, x, y)

    def save(self, directory: str | Path, epoch: int, batch: int | None = None) -> None:
        """Write the checkpoint of the solver after ``epoch`` (or after ``batch`` batches of
        it) into ``directory``, as the command line writes them (every rank its shard)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        checkpoint.save(self.comm, directory, epoch, {"solver": self.solver.state_dict()}, batch=batch,
                        partition=self.solver.network.partition)

    def resume(self, directory: str | Path) -> tuple[int, int | None]:
        """Load the newest checkpoint of ``directory`` (written by :meth:`save` or by the
        command line, on any number of ranks where the solver allows); returns its
        ``(epoch, batch)``. After a whole epoch, go on with :meth:`begin_epoch` of the next;
        after ``batch`` batches of an epoch, with that epoch's batches after the first
        ``batch``, without :meth:`begin_epoch` (its learning rate is set here, and the
        solver's preparations of it came with the checkpoint)."""
        info = checkpoint.restore(self.comm, directory, self.device, self.solver)[0]
        if info["batch"] is not None:
            self.epoch = info["epoch"]
            if self._lr is not None:
                self.solver.set_lr(self._lr(self.epoch))
        return info["epoch"], info["batch"]

    def model_state(self) -> dict[str, torch.Tensor] | None:
        """The whole network's parameters and buffers, gathered from the ranks' slices: on
        rank 0 (what the command line writes to ``model.pt``), ``None`` elsewhere."""
        shards = self.comm.gather(self.solver.network.problem_state())
        return None if shards is None else {k: v for shard in shards for k, v in shard.items()}
