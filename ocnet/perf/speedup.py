"""The performance model: ``python -m ocnet.speedup [--config FILE.toml] [--key value …]``.

For each solver it predicts the time per step and per epoch on P = 1, 2, 4, … ranks by
*replaying the solver's own code* (:mod:`ocnet.perf.replay`): P virtual ranks run the real solver
classes on a miniature of the configured network (same layers, stages and solver options;
a few channels, a few samples), each compute span is charged the cost calibrated on the
configured network (:mod:`ocnet.perf.calibrate`), each message the link's latency plus the bytes
of the *configured* network's state over the bandwidth.  The largest virtual clock is the
step time; the critical path is the solver's schedule, whatever it is.

With P ranks on C < P cores, compute stretches by P / C (the ranks take turns on the cores).
With ``--data-parallel D`` one of the D groups is replayed on its share of the batch, its
gradient average charged as a collective over D ranks (:func:`replay_step`).

Writes ``speedup.json`` and ``speedup.png`` (speedup and efficiency against serial at P = 1)
into ``--out`` and prints a table.  Its own flags (the rest is ``ocnet.run``'s configuration):
``--calibration FILE`` (from ``python -m ocnet.perf.calibrate``; measured now otherwise),
``--max-ranks`` (1024), ``--cores`` (of the predicted machine; default this one's),
``--solvers`` (comma-separated variants, default all of :data:`VARIANTS`), ``--out``
(default ``speedup``), ``--no-recommend`` (skip the MGRIT settings search).
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..ranks import compress
from ..ranks.replicas import GradientAverage, Grid, reduction_bytes
from ..runs import nested
from ..runs.config import COMMON, ConfigError, given, resolve
from ..solvers import get as get_solver
from . import calibrate as cal
from .calibrate import compute_batch
from .replay import OUTSIDE, Link, VirtualReplicas, make_comms, run

#: The solver variants predicted: name ↦ configuration keys that make it.
VARIANTS: dict[str, dict[str, Any]] = {
    "serial": {"solver": "serial"},
    "mgrit-exact": {"solver": "mgrit", "mgrit_mode": "exact"},
    "mgrit-one-shot": {"solver": "mgrit", "mgrit_mode": "one_shot"},
    "penalty": {"solver": "penalty"},
    "al": {"solver": "al"},
    "local-0": {"solver": "local", "local_overlap": 0},
    "local-1": {"solver": "local", "local_overlap": 1},
    "amp": {"solver": "amp"},
    "mgopt": {"solver": "mgopt"},
}
#: MGRIT settings the recommendation considers: (coarsening c, levels).
MGRIT_CANDIDATES = [(2, 2), (4, 2), (8, 2), (2, 3), (4, 3)]
_OWN_FLAGS = {"calibration": str, "max_ranks": int, "cores": int, "solvers": str, "out": str, "no_recommend": bool}


def variant_config(values: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved configuration of a variant: the given keys that the variant's solver
    takes (common keys and its own options), then the variant's."""
    cls = get_solver(variant["solver"])
    keep = {k: v for k, v in values.items() if k in COMMON or k in cls.options_for({**values, **variant})}
    return resolve((), {**keep, **variant})


class Miniature:
    """The configured network shrunk for replay: same layers and stages, ``1 + s`` channels
    in stage ``s`` (width 2 for dense nets), inputs of at most 4 × 4 pixels, ``batch``
    samples.  :meth:`message_bytes` scales a message of it to the configured network's.

    A run that compresses its gradient exchange keeps the configured channels and width:
    what a compressor sends of a tensor depends on the tensor's size (top-k's ``ceil(R n)``,
    AdaComp's bins), so only tensors of the configured sizes send what the run's would."""

    def __init__(self, config: Mapping[str, Any], batch: int) -> None:
        self.config = config
        n_stages = len(config["channels"])
        _, shape, _ = cal.DATASETS[config["problem"]]
        small = (shape[0], min(shape[1], 4), min(shape[2], 4)) if len(shape) == 3 else shape
        whole = config.get("compress", "none") != "none" and config.get("data_parallel", 1) > 1
        self.channels = list(config["channels"]) if whole else [1 + s for s in range(n_stages)]
        width = config["width"] if whole else 2
        self.problem = cal.build_problem(config, channels=self.channels, width=width, input_shape=small)
        self.pristine = {k: v.clone() for k, v in self.problem.state_dict().items()}
        self.batch = batch
        # per-sample state shape of each stage, miniature ↦ configured (one layer per stage)
        real = cal.build_problem(config, layers=max(1, n_stages) if config["layers"] >= n_stages else None)
        mini = cal.build_problem(config, layers=max(1, n_stages) if config["layers"] >= n_stages else None,
                                 channels=self.channels, width=width, input_shape=small)
        self.bytes_per_sample = {m: math.prod(r) * torch.empty((), dtype=getattr(torch, config["dtype"])).element_size()
                                 for m, r in zip(mini.state_shapes, real.state_shapes)}
        self.scale = config["batch_size"] / batch
        self._configured: Any = None  # the configured network, built when first asked for

    def message_bytes(self, t: torch.Tensor) -> float:
        """The bytes the configured network's message stands for (its own size when it is
        not a state: scalars, norms)."""
        per_sample = self.bytes_per_sample.get(tuple(t.shape[1:])) if t.dim() > 1 else None
        if per_sample is None:
            return float(t.numel() * t.element_size())
        return t.shape[0] * self.scale * per_sample

    def gradient_bytes(self, cls: Any, P: int) -> list[int]:
        """The payload of each of ``P`` layer ranks' gradient average in the *configured*
        network (:func:`ocnet.ranks.replicas.reduction_bytes`), under ``cls``'s partition."""
        if self._configured is None:
            self._configured = cal.build_problem(self.config)
        partition = cls.partition(self._configured.n_layers, P, self.config)
        return [reduction_bytes(self._configured.local(partition, r)) for r in range(P)]

    def data(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        x = self.problem.examples(self.batch, g)
        y = torch.randint(0, self.problem.n_classes, (self.batch,), generator=g)
        return x, y, torch.arange(self.batch)


def replay_step(config: Mapping[str, Any], P: int, costs: Mapping[str, float], link: Link,
                mini: Miniature | None = None, steps: int = 1,
                iterations: Sequence[int] | None = None) -> dict[str, Any]:
    """Predict one optimiser step of ``config``'s solver on ``P`` ranks.

    Runs ``steps`` steps of the real solver on :class:`Miniature` virtual ranks (set-up and
    ``begin_epoch`` uncharged) and returns ``{"step": seconds of the last step, "events":
    per-rank timelines of it, "uncharged": kinds without a cost}``.  With
    ``data_parallel = D`` the ranks are D groups of P/D: one group is replayed (its share of
    the batch is ``mini``'s and ``costs``' business), and each optimiser step's gradient
    average is a collective over D ranks of the configured network's gradient
    (:class:`~ocnet.perf.replay.VirtualReplicas`), where the solver's own schedule takes it.
    With ``nested`` levels, the step is the mean of the levels' steps weighted by their
    epochs (an epoch of every level has the same batches).  ``iterations`` ``[forward,
    adjoint]``: an exact MGRIT solver's solves take that many iterations each
    (:func:`iterate_as_measured`).

    Raises
    ------
    ValueError
        When the solver's partition admits no ``P`` ranks for this network, or D does not
        divide P (the reason).
    """
    from ..runs.job import build_solver
    if config.get("nested"):  # nested iteration: each level's step, weighted by its share of the epochs
        plain = {**config, "nested": [], "nested_epochs": []}
        stages = len(Miniature(plain, cal_batch(plain)).problem.stages)
        parts = [(lv.epochs / config["epochs"], replay_step({**plain, "layers": lv.layers}, P, costs, link,
                                                              steps=steps))
                 for lv in nested.plan(config, stages)]
        return {**parts[-1][1], "step": sum(w * r["step"] for w, r in parts)}
    cls = get_solver(config["solver"])
    mini = mini or Miniature(config, cal_batch(config))
    D = int(config.get("data_parallel", 1))
    Grid.check(D, P)
    P //= D
    partition = cls.partition(mini.problem.n_layers, P, config)
    mini.problem.load_state_dict(mini.pristine)
    x, y, index = mini.data()
    comms = make_comms(P, link, mini.message_bytes)
    solvers: list[Any] = [None] * P
    gradient_bytes = mini.gradient_bytes(cls, P) if D > 1 else []

    def setup(comm: Any) -> None:
        net = mini.problem.local(partition, comm.rank)
        solver = solvers[comm.rank] = build_solver(cls, net, comm, dict(config), torch.device("cpu"))
        if iterations is not None:
            iterate_as_measured(solver, iterations)
        if D > 1:  # the configured compressor on the miniature's gradients, its bytes scaled up
            scale = gradient_bytes[comm.rank] / max(reduction_bytes(net), 1)
            compressor = compress.make(config.get("compress", "none"), config.get("compress_ratio", 0.01),
                                       config.get("compress_bin", 0))
            average = GradientAverage(solver.replicated_parameters(), solver.optimizers,
                                      VirtualReplicas(comm, D, scale), compressor,
                                      config.get("compress_exchange", "auto"))
            average.weight = 1 / D
            solver.gradient_average = average
        solver.begin_epoch(0, x, y)

    def train(comm: Any) -> list[float]:
        ends = []
        for _ in range(steps):
            solvers[comm.rank].step(x, y, index)
            ends.append(comm.clock)
        return ends

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(P, setup, {}, comms=comms)
        for c in comms:
            c.clock = 0.0
        replay = run(P, train, costs, comms=comms)
    finally:
        torch.set_num_threads(threads)
    ends = [max(r[k] for r in replay.results) for k in range(steps)]
    step = ends[-1] - (ends[-2] if steps > 1 else 0.0)
    start = ends[-2] if steps > 1 else 0.0
    events = [[e for e in ev if e[2] > start] for ev in replay.events]
    return {"step": step, "events": events, "uncharged": replay.uncharged}


def iterate_as_measured(solver: Any, iterations: Sequence[int]) -> None:
    """Make an exact MGRIT ``solver`` stop its forward solve after ``iterations[0]`` and its
    adjoint solve after ``iterations[1]`` iterations (the miniature converges otherwise than
    the configured network, whose iterations :func:`ocnet.perf.calibrate.profile` measured);
    the configuration's tolerance must be one the solves never meet (:func:`_mgrit_iterations`)."""
    solver.max_iter = dict(zip(("forward", "adjoint"), iterations))


def group_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as one of its ``data_parallel`` groups sees it: its share of the batch."""
    return {**config, "batch_size": -(-config["batch_size"] // int(config.get("data_parallel", 1)))}


def cal_batch(config: Mapping[str, Any]) -> int:
    """The miniature's batch: enough samples for every micro-batch."""
    return max(2, int(config.get("micro_batches", 1)))


def stretched(costs: Mapping[str, float], P: int, cores: int,
              neighbours: Mapping[str, float] | None = None) -> dict[str, float]:
    """Compute costs with P ranks sharing ``cores`` cores: ``× P / cores`` when P > cores,
    and with P ≥ 2 each kind × its factor beside a waiting neighbour (``neighbours``, from
    :func:`ocnet.perf.calibrate.neighbour_factors`; the time outside spans takes the
    median factor)."""
    f = max(1.0, P / cores)
    beside = dict(neighbours or {}) if P > 1 else {}
    if beside:
        beside.setdefault(OUTSIDE, sorted(beside.values())[len(beside) // 2])
    return {k: v * f * beside.get(k, 1.0) for k, v in costs.items()}


def exact_iterations(factor: float | None, tol: float, max_iter: int) -> int | None:
    """Iterations an exact solve needs to reduce the residual by ``tol`` at convergence
    factor ``factor`` (``None`` when it does not converge within ``max_iter``)."""
    if factor is None or not 0 <= factor < 1:
        return None
    if factor == 0:
        return 1
    return min(max_iter + 1, max(1, math.ceil(math.log(tol) / math.log(factor)))) if max_iter else None


def predict(values: Mapping[str, Any], calibration: Mapping[str, Any], *, max_ranks: int = 1024,
            cores: int | None = None, variants: list[str] | None = None, recommend: bool = True,
            steps_per_epoch: int | None = None) -> dict[str, Any]:
    """The model's predictions for the configuration ``values`` (raw keys, as
    :func:`ocnet.runs.config.given` returns them): see the module docstring; JSON-ready."""
    cores = cores or os.cpu_count() or 1
    link = Link(**{k: calibration["link"][k] for k in ("latency", "bandwidth", "reduction")})
    ranks = [2 ** k for k in range(int(math.log2(max_ranks)) + 1)]
    base = resolve((), dict(values)) if "solver" in values else variant_config(values, VARIANTS["serial"])
    n_train = cal.DATASETS[base["problem"]][0]
    steps_per_epoch = steps_per_epoch or math.ceil(n_train / base["batch_size"])
    out: dict[str, Any] = {"ranks": ranks, "cores": cores, "link": vars(link), "steps_per_epoch": steps_per_epoch,
                           "layers": base["layers"], "data_parallel": base["data_parallel"], "solvers": {}}
    if base["data_parallel"] > 1:  # the speedups' reference: serial on one rank in one group
        serial = variant_config({**values, "data_parallel": 1}, VARIANTS["serial"])
        out["reference_step"] = replay_step(serial, 1, _costs(calibration, compute_batch(serial), "serial"),
                                            link)["step"]
    for name in variants or list(VARIANTS):
        try:
            config = variant_config(values, VARIANTS[name])
        except ConfigError as e:
            out["solvers"][name] = {"error": str(e)}
            continue
        measured = calibration.get("profiles", {}).get(name) or {}
        iterations = None
        if config["solver"] == "mgrit":
            if config["mgrit_mode"] == "exact":
                iterations = measured.get("iterations")
            config = _mgrit_iterations(config, calibration, iterations)
        batch = compute_batch(group_config(config))
        costs = _costs(calibration, batch, name)
        neighbours = _nearest(calibration.get("neighbours") or {}, batch)
        mini = Miniature(group_config(config), cal_batch(config))
        rows: dict[str, Any] = {}
        uncharged: dict[str, int] = {}
        for P in ranks:
            try:
                r = replay_step(config, P, stretched(costs, P, cores, neighbours), link, mini,
                                steps=2 if get_solver(config["solver"]).overlaps_steps else 1, iterations=iterations)
            except ValueError as e:  # the solver's partition (or the data groups) admit no P ranks here
                rows[str(P)] = {"skipped": str(e).splitlines()[0]}
                continue
            for k, n in r["uncharged"].items():
                uncharged[k] = uncharged.get(k, 0) + n
            rows[str(P)] = {"step": r["step"], "epoch": r["step"] * steps_per_epoch, "oversubscribed": P > cores}
        out["solvers"][name] = {"per_rank_count": rows, "uncharged": uncharged,
                                "coverage": measured.get("coverage"), "outside": costs[OUTSIDE],
                                "iterations": iterations,
                                "options": {k: config[k] for k in get_solver(config["solver"]).options}}
    _speedups(out)
    if recommend and any(VARIANTS[n]["solver"] == "mgrit" for n in out["solvers"]):
        out["mgrit_recommendation"] = recommend_mgrit(values, calibration, ranks, cores, link)
    return out


def _costs(calibration: Mapping[str, Any], batch: int, variant: str) -> dict[str, float]:
    """The costs of ``variant``'s spans at ``batch``: where its profile's real steps ran at
    that batch, each kind as they took it (:func:`ocnet.perf.calibrate.profile`), else
    the calibrated cost at the nearest batch calibrated, scaled linearly; and
    :data:`~ocnet.perf.replay.OUTSIDE`, the time outside spans per span of the profile (0
    without one).  A variant without a profile of its own (one that has no partition on one
    rank, such as local parallelism with an overlap) takes that of another variant of the
    same solver."""
    table = {int(b): c for b, c in calibration["compute"].items()}
    near = min(table, key=lambda b: abs(math.log(b / batch)))
    profiles = calibration.get("profiles", {})
    solver = VARIANTS.get(variant, {}).get("solver")
    measured: Mapping[str, Any] = profiles.get(variant) or next(
        (profiles[v] for v in VARIANTS if VARIANTS[v]["solver"] == solver and profiles.get(v)), {})
    own = measured.get("costs", {}) if measured.get("batch") == batch else {}
    return {**{k: v * batch / near for k, v in table[near].items()}, **own,
            OUTSIDE: float(measured.get("outside", 0.0))}


def _nearest(by_batch: Mapping[str, Mapping[str, float]], batch: int) -> dict[str, float]:
    """The entry of ``by_batch`` (batch ↦ numbers) calibrated at the batch nearest ``batch``
    (empty when there is none)."""
    if not by_batch:
        return {}
    near = min(by_batch, key=lambda b: abs(math.log(int(b) / batch)))
    return dict(by_batch[near])


def _mgrit_iterations(config: dict[str, Any], calibration: Mapping[str, Any],
                      measured: Sequence[int] | None = None) -> dict[str, Any]:
    """For the replay: an exact solve runs the iterations the real network takes (the
    miniature converges otherwise), with a tolerance it never meets: ``measured`` (from
    :func:`ocnet.perf.calibrate.profile`, set by :func:`iterate_as_measured`), else those
    its calibrated convergence factor asks for.  Without either the miniature's own
    convergence decides (the configuration is left as it is)."""
    if config["mgrit_mode"] != "exact":
        return config
    if measured:
        return {**config, "mgrit_tol": 1e-300, "mgrit_max_iter": max(measured)}
    key = f"{config['coarsening']},{config['mgrit_levels']}"
    factor = calibration.get("mgrit_factors", {}).get(key)
    if factor is None:
        return config
    k = exact_iterations(factor, config["mgrit_tol"], config["mgrit_max_iter"])
    return {**config, "mgrit_tol": 1e-300, "mgrit_max_iter": k or config["mgrit_max_iter"]}


def _speedups(out: dict[str, Any]) -> None:
    """Speedup and efficiency against serial at P = 1 (in one data group), and the crossover
    P of each solver."""
    serial = out["solvers"].get("serial", {}).get("per_rank_count", {}).get("1", {})
    t1 = out.get("reference_step", serial.get("step"))
    for s in out["solvers"].values():
        rows = s.get("per_rank_count", {})
        for P, row in rows.items():
            if t1 and "step" in row:
                row["speedup"] = t1 / row["step"]
                row["efficiency"] = row["speedup"] / int(P)
        s["crossover"] = next((int(P) for P, row in rows.items() if row.get("speedup", 0) > 1), None)


def recommend_mgrit(values: Mapping[str, Any], calibration: Mapping[str, Any], ranks: list[int], cores: int,
                    link: Link) -> dict[str, Any]:
    """For each P, the (c, levels, iterations) of an exact MGRIT solve with the least
    predicted step time among :data:`MGRIT_CANDIDATES` whose measured convergence factor
    (``calibration["mgrit_factors"]``) meets the tolerance.  The time of ``k`` iterations is
    replayed at 1 and 2 iterations and extended linearly (each iteration costs the same)."""
    best: dict[str, Any] = {}
    for c, L in MGRIT_CANDIDATES:
        factor = calibration.get("mgrit_factors", {}).get(f"{c},{L}")
        try:
            config = variant_config(values, {**VARIANTS["mgrit-exact"], "coarsening": c, "mgrit_levels": L})
        except ConfigError:
            continue
        k = exact_iterations(factor, config["mgrit_tol"], config["mgrit_max_iter"])
        if k is None:
            continue
        costs = _costs(calibration, group_config(config)["batch_size"], "mgrit-exact")
        neighbours = _nearest(calibration.get("neighbours") or {}, group_config(config)["batch_size"])
        mini = Miniature(group_config(config), 2)
        for P in ranks:
            try:
                t = [replay_step({**config, "mgrit_tol": 1e-300, "mgrit_max_iter": i}, P,
                                 stretched(costs, P, cores, neighbours), link, mini, steps=1)["step"] for i in (1, 2)]
            except ValueError:
                continue
            step = t[0] + (k - 1) * (t[1] - t[0])
            if str(P) not in best or step < best[str(P)]["step"]:
                best[str(P)] = {"coarsening": c, "levels": L, "iterations": k, "factor": factor, "step": step}
    return best


def plot(prediction: Mapping[str, Any], path: str | Path,
         measured: Mapping[str, Mapping[int, float]] | None = None) -> None:
    """Speedup and efficiency curves (and measured speedups as points, if given)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_s, ax_e = fig.subplots(1, 2)
    for i, (name, s) in enumerate(prediction["solvers"].items()):
        rows = [(int(P), r) for P, r in s.get("per_rank_count", {}).items() if "speedup" in r]
        if not rows:
            continue
        color = f"C{i}"
        ax_s.plot([P for P, _ in rows], [r["speedup"] for _, r in rows], "-", color=color, label=name)
        ax_e.plot([P for P, _ in rows], [r["efficiency"] for _, r in rows], "-", color=color, label=name)
        if measured and name in measured:
            pts = sorted(measured[name].items())
            ax_s.plot([P for P, _ in pts], [v for _, v in pts], "o", color=color)
    for ax, label in ((ax_s, "speedup vs serial, P = 1"), (ax_e, "efficiency")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks P")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    ax_s.set_yscale("log", base=2)
    if ax_s.get_legend_handles_labels()[0]:  # no curve without the serial solver to compare with
        ax_s.legend(fontsize=8)
    what = "lines predicted, points measured" if measured else "predicted"
    fig.suptitle(f"{what}: N = {prediction['layers']} layers, {prediction['cores']} cores")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)


def table(prediction: Mapping[str, Any]) -> str:
    """The predictions as text: one line per solver and P."""
    lines = [f"{'solver':<16} {'P':>5} {'step (s)':>10} {'epoch (s)':>10} {'speedup':>8} {'eff.':>6}"]
    for name, s in prediction["solvers"].items():
        if "error" in s:
            lines.append(f"{name:<16} {s['error']}")
            continue
        for P, r in s["per_rank_count"].items():
            if "skipped" in r:
                lines.append(f"{name:<16} {P:>5}  not admitted: {r['skipped']}")
                continue
            flag = " (oversubscribed)" if r["oversubscribed"] else ""
            lines.append(f"{name:<16} {P:>5} {r['step']:>10.4g} {r['epoch']:>10.4g} {r.get('speedup', math.nan):>8.3g} "
                         f"{r.get('efficiency', math.nan):>6.2f}{flag}")
        lines.append(f"{name:<16} crossover P (beats serial at P = 1): {s['crossover']}; compute kinds "
                     f"without a span cost: {s['uncharged'] or 'none'}; span coverage at P = 1: {s['coverage']}")
    for P, r in prediction.get("mgrit_recommendation", {}).items():
        lines.append(f"mgrit at P = {P}: c = {r['coarsening']}, levels = {r['levels']}, "
                     f"{r['iterations']} iterations (factor {r['factor']:.3g}): {r['step']:.4g} s per step")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m ocnet.speedup``: predict, write ``speedup.json`` / ``speedup.png``, print the
    table; returns the exit status (2 for a bad configuration)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        return 0
    own: dict[str, Any] = {"calibration": "", "max_ranks": 1024, "cores": 0, "solvers": "", "out": "speedup",
                           "no_recommend": False}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        key = argv[i][2:].replace("-", "_") if argv[i].startswith("--") else ""
        if key in _OWN_FLAGS:
            if _OWN_FLAGS[key] is bool:
                own[key] = True
            else:
                own[key] = _OWN_FLAGS[key](argv[i + 1])
                i += 1
        else:
            rest.append(argv[i])
        i += 1
    try:
        base = resolve(rest)  # every key checked, as ocnet.run checks them
        values = given(rest)
    except ConfigError as e:
        print(f"ocnet: error: {e}", file=sys.stderr)
        return 2
    names = [n for n in own["solvers"].split(",") if n] or list(VARIANTS)
    if own["calibration"]:
        calibration = cal.load(own["calibration"])
    else:
        configs = [variant_config(values, VARIANTS[n]) for n in names]
        batches = {compute_batch(c) for c in configs} | {compute_batch(group_config(c)) for c in configs}
        mgrit = MGRIT_CANDIDATES if not own["no_recommend"] and len(base["channels"]) == 1 else []
        calibration = cal.calibrate(base, batches, mgrit, profiles=dict(zip(names, configs)))
    prediction = predict(values, calibration, max_ranks=own["max_ranks"], cores=own["cores"] or None,
                         variants=names, recommend=not own["no_recommend"])
    out = Path(own["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "speedup.json").write_text(json.dumps(prediction, indent=2) + "\n")
    plot(prediction, out / "speedup.png")
    print(table(prediction))
    print(f"wrote {out / 'speedup.json'} and {out / 'speedup.png'}")
    return 0
