"""Every family of layer-parallel training on the same problems, ranks and clocks: one table.

    OCNET_MALLOC=tuned python benchmarks/bench_families.py [--problems digits,mnist1d]
        [--variants serial,...] [--seeds 0,1,2] [--epochs E] [--ranks 2] [--max-ranks 1024]
        [--predict-layers 1024] [--target ACC] [--quick] [--out FILE.json]

(it starts its own ``mpiexec`` jobs).  Each variant of :data:`VARIANTS` trains each problem of
:data:`PROBLEMS` as ``mpiexec -n P python -m ocnet.run`` (one thread per rank), once per seed.
One network per problem for every variant (one stage: MGRIT takes no more), the solver
settings of ``mpi_runs/configs/mnist1d_*.toml`` where one exists:

``digits``   the conv net of 16 channels, 16 layers on [0, 4], Adam 3e-3 (as
             ``bench_accuracy_control.py``), batch 64, 10 epochs;
``mnist1d``  the conv1d net of 32 channels, 16 layers on [0, 4], Adam 3e-3, batch 64, 20
             epochs (``mnist1d_serial.toml``).

Measured at P = ``--ranks``, per variant and problem (each seed, and over the seeds):

* time per epoch: the median over epochs of the differences of the epoch records'
  ``wall_time`` (training and the epoch's evaluation); time per step: the median over steps;
* epochs and wall time to the target test accuracy (``--target``; default 90 % of the serial
  variant's mean final accuracy on that problem), ``null`` where a seed never reaches it;
* final test accuracy: each seed, mean and sd;
* bytes sent per step, all ranks together: the iteration records' ``bytes_sent`` over the
  steps (``bytes_per_step``), and the summary's total, evaluation and epoch set-up included,
  over the steps (``bytes_per_step_total``);
* peak memory per rank: ocnet records none, so each rank runs under ``/usr/bin/time -f %M``
  (the rank's maximum resident set, the Python interpreter and torch included); the table
  shows the largest over ranks and seeds.

Predicted at P = 1, 2, …, ``--max-ranks`` by ocnet's performance model (:mod:`ocnet.perf.speedup`:
the solvers' own schedules replayed on a calibration made here, one thread, each rank a core
of its own unless ``--cores``), as ``bench_scaling.py`` predicts: for the measured network
(16 layers admit at most 16 ranks; the partitions' reasons are kept) and for the same network
``--predict-layers`` deep (0: none), so that P up to 1024 have figures.  In the predictions
the penalty family cuts one block per rank (``blocks = 0``; the configured 4 blocks admit at
most 4 ranks).  The model's table of data sets (:data:`ocnet.perf.calibrate.DATASETS`) lacks
``mnist1d``: its sizes are added here from the data set itself.  The hybrid's replayed step is
its first epoch's, a parallel one.

A variant whose solver is not registered (``ocnet.solvers.available()``) is skipped with a
note, ``"skipped"`` in the JSON.  ``--quick`` (one seed, 2 epochs of 5 batches, predictions
of the measured network only) is a smoke run; it prints an estimate of the full run's time.
Writes ``results/bench_families.json`` and prints the table and its reStructuredText.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import allocator, mpiexec, refuse_mpiexec, refuse_unknown, tune_malloc, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ocnet import solvers  # noqa: E402
from ocnet.model import data as datasets  # noqa: E402
from ocnet.perf import calibrate as cal  # noqa: E402
from ocnet.perf import speedup  # noqa: E402
from ocnet.runs.config import given  # noqa: E402

#: Problem ↦ the network and training every variant shares, and its default epochs.
PROBLEMS: dict[str, dict[str, Any]] = {
    "digits": {"keys": {"problem": "digits", "net": "conv", "channels": "16", "layers": 16, "final_time": 4.0,
                        "batch_size": 64, "lr": 0.003}, "epochs": 10},
    "mnist1d": {"keys": {"problem": "mnist1d", "net": "conv1d", "channels": "32", "layers": 16, "final_time": 4.0,
                         "batch_size": 64, "lr": 0.003}, "epochs": 20},
}
_MGRIT = {"mgrit_levels": 2, "coarsening": 4}  # mnist1d_mgrit.toml's, for both modes
#: Variant ↦ the configuration keys that make it (settings of mpi_runs/configs/mnist1d_*.toml).
VARIANTS: dict[str, dict[str, Any]] = {
    "serial": {"solver": "serial", "micro_batches": 4},  # the pipeline of digits_conv_pipeline.toml
    "mgrit-one-shot": {"solver": "mgrit", "mgrit_mode": "one_shot", "mgrit_iters": 2, **_MGRIT},
    "mgrit-exact": {"solver": "mgrit", "mgrit_mode": "exact", **_MGRIT},
    "penalty": {"solver": "penalty", "blocks": 4},
    "al": {"solver": "al", "blocks": 4},
    "hybrid": {"solver": "hybrid", "parallel": "penalty", "parallel_epochs": 3, "serial_epochs": 1, "blocks": 4},
    "local-0": {"solver": "local", "local_overlap": 0},
    "local-1": {"solver": "local", "local_overlap": 1},
    "amp": {"solver": "amp"},
}
#: Keys the predictions change: one penalty block per rank, so that any P is admitted.
PREDICTION_OVERRIDES = {"blocks": 0}
TARGET_FRACTION = 0.9  # of serial's mean final accuracy
QUICK_BATCHES = 5
TUNABLES = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"
#: Seconds one variant's prediction took at 1024 layers, P = 1 … 1024, on the 2-core development
#: machine (35–50 s; MGRIT exact more): the estimate of a full run scales it by the layers.
PREDICT_S_AT_1024 = 50.0


def flags(keys: dict[str, Any]) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in keys.items()]


def train(keys: dict[str, Any], P: int, seed: int, epochs: int, limit: int, out: Path) -> dict[str, Any]:
    """One ``ocnet.run`` job; its records reduced to the table's figures (``error`` if it failed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if allocator() == "tuned":
        env.setdefault("GLIBC_TUNABLES", TUNABLES)
    rss_file = out.with_suffix(".rss")  # each rank appends its line: no race with the launcher's output
    rss_file.unlink(missing_ok=True)
    timer = ["/usr/bin/time", "-a", "-o", str(rss_file), "-f", "%M"] if Path("/usr/bin/time").exists() else []
    cmd = [mpiexec(), "-n", str(P), *timer, sys.executable, "-m", "mpi4py", "-m", "ocnet.run", *flags(keys),
           "--seed", str(seed), "--epochs", str(epochs), "--limit-batches", str(limit), "--threads", "1", "--quiet",
           "--plots", "none", "--timeline-steps", "0", "--overwrite", "--out", str(out)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=4 * 3600)
    except subprocess.TimeoutExpired:
        return {"seed": seed, "error": "timed out after 4 h"}
    process = time.perf_counter() - t0
    lines = rss_file.read_text().splitlines() if rss_file.exists() else []
    rss = [int(x) / 1024 for x in lines if x.strip().isdigit()]
    if done.returncode != 0 or not (out / "summary.json").exists():
        lines = [x for x in (done.stderr + done.stdout).splitlines() if x.strip()]
        return {"seed": seed, "error": (lines or [f"exit status {done.returncode}"])[-1], "process_s": process}
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines() if x.strip()]
    iters = [r for r in records if r["kind"] == "iter"]
    ends = [r for r in records if r["kind"] == "epoch"]
    steps = [b["wall_time"] - a["wall_time"] for a, b in zip(iters, iters[1:]) if b["epoch"] == a["epoch"]]
    walls = [r["wall_time"] for r in ends]
    return {"seed": seed, "final_test_acc": summary["final_test_acc"],
            "epoch_s": statistics.median(b - a for a, b in zip([0.0, *walls], walls)) if walls else None,
            "step_s": statistics.median(steps) if steps else None,
            "steps_per_epoch": len(iters) / len(ends) if ends else None,
            "bytes_per_step": sum(r.get("bytes_sent", 0) for r in iters) / len(iters) if iters else None,
            "bytes_per_step_total": summary["bytes_sent"] / summary["steps"] if summary["steps"] else None,
            "peak_rss_mb_per_rank": rss or None, "wall_s": summary["wall_time"], "process_s": process,
            "curve": [{"epoch": r["epoch"], "wall_time": r["wall_time"], "test_acc": r.get("test_acc")} for r in ends]}


def mean_sd(xs: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(xs) if xs else None, "sd": statistics.stdev(xs) if len(xs) > 1 else None,
            "per_seed": xs}


def reach(runs: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    """Each seed's epochs and seconds to ``target``, and their medians over the seeds that reach it."""
    to = []
    for r in runs:
        hit = next((c for c in r["curve"] if target is not None and (c["test_acc"] or 0) >= target), None)
        to.append({"seed": r["seed"], "epochs": hit["epoch"] + 1 if hit else None,
                   "wall_time": hit["wall_time"] if hit else None})
    reached = [t for t in to if t["epochs"] is not None]
    return {"target": target, "per_seed": to, "reached": f"{len(reached)}/{len(to)}",
            "epochs": statistics.median(t["epochs"] for t in reached) if reached else None,
            "wall_time": statistics.median(t["wall_time"] for t in reached) if reached else None}


def summarise(runs: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    """The figures over the seeds, and each seed's epochs and seconds to ``target``."""
    ok = [r for r in runs if "error" not in r]

    def med(key: str) -> float | None:
        values = [r[key] for r in ok if r.get(key) is not None]
        return statistics.median(values) if values else None

    rss = [max(r["peak_rss_mb_per_rank"]) for r in ok if r.get("peak_rss_mb_per_rank")]
    return {"epoch_s": med("epoch_s"), "step_s": med("step_s"), "bytes_per_step": med("bytes_per_step"),
            "bytes_per_step_total": med("bytes_per_step_total"), "peak_rss_mb": max(rss) if rss else None,
            "final_test_acc": mean_sd([r["final_test_acc"] for r in ok]),
            "to_target": reach(ok, target),
            "errors": [f"seed {r['seed']}: {r['error']}" for r in runs if "error" in r]}


@contextlib.contextmanager
def model_variants(names: list[str]) -> Iterator[None]:
    """The model's variant table with this benchmark's variants (and their settings) in it."""
    saved = dict(speedup.VARIANTS)
    speedup.VARIANTS.update({n: {**VARIANTS[n], **{k: v for k, v in PREDICTION_OVERRIDES.items()
                                                     if k in VARIANTS[n]}} for n in names})
    try:
        yield
    finally:
        speedup.VARIANTS.clear()
        speedup.VARIANTS.update(saved)


def predict(problem: str, names: list[str], layers: int, max_ranks: int, cores: int) -> dict[str, Any]:
    """The model's step and epoch times of each variant on ``problem``'s network at ``layers``
    layers: ``{"calibration": …, "solvers": {name: {"per_rank_count": …} or {"error": …}}}``."""
    values = given(flags({**PROBLEMS[problem]["keys"], "layers": layers}))
    t0 = time.perf_counter()
    with model_variants(names):
        try:
            configs = {n: speedup.variant_config(values, speedup.VARIANTS[n]) for n in names}
            batches = {speedup.compute_batch(c) for c in configs.values()}
            mgrit = {(c["coarsening"], c["mgrit_levels"]) for c in configs.values() if c["solver"] == "mgrit"}
            calibration = cal.calibrate(configs.get("serial") or next(iter(configs.values())), batches, sorted(mgrit),
                                        with_coverage=False)
        except Exception as e:  # noqa: BLE001 - the model's failure is a result here
            return {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
        out: dict[str, Any] = {"layers": layers, "calibration": calibration, "solvers": {}}
        for n in names:
            try:
                p = speedup.predict(values, calibration, max_ranks=max_ranks, cores=cores, variants=[n],
                                    recommend=False)
                out["solvers"][n] = p["solvers"][n]
                out["steps_per_epoch"] = p["steps_per_epoch"]
            except Exception as e:  # noqa: BLE001
                out["solvers"][n] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    out["seconds"] = time.perf_counter() - t0
    return out


def n_train(problem: str) -> int:
    """Training samples of ``problem``; registers it with the model when its table lacks it."""
    if problem not in cal.DATASETS:
        d = datasets.load(problem, seed=0)
        cal.DATASETS[problem] = (len(d.y_train), tuple(d.input_shape), d.n_classes)
    return cal.DATASETS[problem][0]


def estimate(rows: list[dict[str, Any]], args: argparse.Namespace, n_seeds: int, names: list[str],
             problems: list[str], predict_layers: int) -> float:
    """Seconds a full run would take, from this (quick) run: per job its start-up, and per
    epoch the full epoch's steps at the measured step time plus the measured evaluation time;
    an unmeasured variant costs the mean of the measured parallel ones."""
    total = 0.0
    for problem in problems:
        epochs = args.epochs or PROBLEMS[problem]["epochs"]
        steps = math.ceil(n_train(problem) / PROBLEMS[problem]["keys"]["batch_size"])
        job: dict[str, float] = {}
        for r in rows:
            runs = [x for x in r.get("runs", []) if "error" not in x and x.get("step_s")]
            if r["problem"] != problem or not runs:
                continue
            x = runs[0]
            evaluation = max(0.0, x["epoch_s"] - x["steps_per_epoch"] * x["step_s"])
            job[r["variant"]] = x["process_s"] - x["wall_s"] + epochs * (steps * x["step_s"] + evaluation)
        parallel = [v for k, v in job.items() if k != "serial"] or list(job.values()) or [0.0]
        total += n_seeds * sum(job.get(n, statistics.fmean(parallel)) for n in names)
    return total + len(problems) * len(names) * PREDICT_S_AT_1024 * predict_layers / 1024


def _f(x: float | None, fmt: str, scale: float = 1.0) -> str:
    return "-" if x is None else format(x * scale, fmt)


def cells(row: dict[str, Any], shown: list[int]) -> list[str]:
    """The table's cells of one row: measured figures, then predicted seconds per step."""
    if "skipped" in row:
        return [row["variant"], row["problem"], "skipped: not registered"] + ["-"] * (6 + len(shown))
    m = row["measured"]
    acc = m["final_test_acc"]
    t = m["to_target"]
    sd = f" ± {acc['sd'] * 100:.1f}" if acc["sd"] is not None else ""
    out = [row["variant"], row["problem"], _f(m["epoch_s"], ".3g"), _f(m["step_s"], ".3g"),
           f"{_f(t['epochs'], '.3g')} ({t['reached']})", _f(t["wall_time"], ".3g"),
           f"{_f(acc['mean'], '.1f', 100)}{sd}", _f(m["bytes_per_step"], ".3g", 1e-6), _f(m["peak_rss_mb"], ".0f")]
    deep = row.get("predicted", {}).get("deep") or row.get("predicted", {}).get("measured_net") or {}
    per = deep.get("per_rank_count", {})
    for P in shown:
        r = per.get(str(P), {})
        out.append(_f(r.get("step"), ".3g") if "step" in r else "n/a" if "skipped" in r or "error" in deep else "-")
    return out


def header(P: int, shown: list[int]) -> list[str]:
    return (["variant", "problem", f"s/epoch (P={P})", f"s/step (P={P})", "epochs to target (reached)", "s to target",
             "test acc %", "MB/step", "peak RSS MB/rank"] + [f"pred. s/step P={p}" for p in shown])


def rst(rows: list[list[str]], head: list[str]) -> str:
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for r in [head, *rows]:
        r = r + [""] * (len(head) - len(r))
        lines += [f"   * - {r[0]}"] + [f"     - {c}" for c in r[1:]]
    return "\n".join(lines)


def text(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(r[i]) if i < len(r) else 0 for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=0, help="epochs of every run (0: per problem, see PROBLEMS)")
    ap.add_argument("--ranks", type=int, default=2, help="P of the measured runs")
    ap.add_argument("--max-ranks", type=int, default=1024, help="largest P predicted")
    ap.add_argument("--predict-layers", type=int, default=-1,
                    help="layers of the deep network predicted (0: none; default 1024, none with --quick)")
    ap.add_argument("--cores", type=int, default=0, help="cores of the predicted machine (0: one per rank)")
    ap.add_argument("--target", type=float, default=None,
                    help=f"test accuracy (a fraction) to reach; default {100 * TARGET_FRACTION:.0f} %% of "
                    "serial's mean final")
    ap.add_argument("--quick", action="store_true", help=f"1 seed, 2 epochs of {QUICK_BATCHES} batches: a smoke run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    refuse_mpiexec("bench_families.py")
    names, problems = args.variants.split(","), args.problems.split(",")
    refuse_unknown("variant", names, VARIANTS, problems, PROBLEMS)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    limit = QUICK_BATCHES if args.quick else 0
    predict_layers = args.predict_layers if args.predict_layers >= 0 else 0 if args.quick else 1024
    tuned = tune_malloc() if allocator() == "tuned" else False
    registered = solvers.available()
    cores = args.cores or args.max_ranks
    shown = [p for p in (8, 16, 64, 256, 1024) if p <= args.max_ranks]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for problem in problems:
            epochs = 2 if args.quick else args.epochs or PROBLEMS[problem]["epochs"]
            n_train(problem)
            ready = [n for n in names if VARIANTS[n]["solver"] in registered]
            predicted = {"measured_net": predict(problem, ready, PROBLEMS[problem]["keys"]["layers"], args.max_ranks,
                                                 cores)}
            if predict_layers:
                predicted["deep"] = predict(problem, ready, predict_layers, args.max_ranks, cores)
            settings[problem] = {"keys": PROBLEMS[problem]["keys"], "epochs": epochs,
                                 "calibration": {k: v.get("calibration") for k, v in predicted.items()},
                                 "prediction_seconds": {k: v.get("seconds") for k, v in predicted.items()}}
            for name in names:
                row: dict[str, Any] = {"variant": name, "problem": problem, "keys": VARIANTS[name]}
                rows.append(row)
                if name not in ready:
                    row["skipped"] = f"solver {VARIANTS[name]['solver']!r} is not registered"
                    print(f"{name:<15} {problem:<8} skipped: {row['skipped']}", flush=True)
                    continue
                keys = {**PROBLEMS[problem]["keys"], **VARIANTS[name]}
                row["runs"] = [train(keys, args.ranks, s, epochs, limit, Path(tmp) / f"{problem}-{name}-{s}")
                               for s in seeds]
                row["predicted"] = {k: v["solvers"].get(name, {}) if "solvers" in v else {"error": v["error"]}
                                    for k, v in predicted.items()}
                m = summarise(row["runs"], None)
                print(f"{name:<15} {problem:<8} epoch {_f(m['epoch_s'], '.3g')} s, step {_f(m['step_s'], '.3g')} s, "
                      f"test acc {_f(m['final_test_acc']['mean'], '.1f', 100)} %, "
                      f"{_f(m['bytes_per_step'], '.3g', 1e-6)} MB/step, peak {_f(m['peak_rss_mb'], '.0f')} MB/rank"
                      + "".join(f"\n    {e}" for e in m["errors"]), flush=True)
    # the target needs serial's accuracy: summarised once every run is in
    targets: dict[str, float | None] = {}
    for problem in problems:
        serial = next((r for r in rows if r["problem"] == problem and r["variant"] == "serial" and "runs" in r), None)
        accs = [x["final_test_acc"] for x in (serial or {}).get("runs", []) if "error" not in x]
        targets[problem] = args.target if args.target is not None else (
            TARGET_FRACTION * statistics.fmean(accs) if accs else None)
        settings[problem]["target"] = targets[problem]
        settings[problem]["target_from"] = "--target" if args.target is not None else (
            f"{TARGET_FRACTION:.0%} of serial's mean final test accuracy" if accs else "none: no serial run")
    for row in rows:
        if "runs" in row:
            m = row["measured"] = summarise(row["runs"], targets[row["problem"]])
            at = row["predicted"]["measured_net"].get("per_rank_count", {}).get(str(args.ranks), {})
            if m["step_s"] and at.get("step"):  # predicted / measured - 1 at the measured P
                row["model_error"] = at["step"] / m["step_s"] - 1
    head = header(args.ranks, shown)
    table = [cells(r, shown) for r in rows]
    print()
    print(text(table, head))
    which = "deep" if predict_layers else "measured_net"
    print(f"\npredicted: seconds per step on the {predict_layers or PROBLEMS[problems[0]]['keys']['layers']}-layer "
          f"network, {'one core per rank' if not args.cores else f'{cores} cores'} (n/a: P not admitted)")
    rest = rst(table, head)
    print("\n" + rest + "\n")
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {
        "allocator": allocator(), "malloc_tuned": tuned, "args": vars(args), "ranks": args.ranks, "seeds": seeds,
        "limit_batches": limit, "problems": settings, "variants": VARIANTS, "registered": sorted(registered),
        "prediction": {"max_ranks": args.max_ranks, "cores": cores, "layers": predict_layers,
                       "overrides": PREDICTION_OVERRIDES, "table_shows": which},
        "peak_memory": "max RSS of each rank's process, by /usr/bin/time -f %M around it (interpreter and torch "
                       "included); peak_rss_mb is the largest over ranks and seeds",
        "bytes": "all ranks together: bytes_per_step from the iteration records, bytes_per_step_total from the "
                 "summary (evaluation and epoch set-up included)",
        "rows": rows, "table": {"header": head, "rows": table}, "rst": rest, "seconds": elapsed}
    if args.quick:
        full = estimate(rows, args, len(args.seeds.split(",")), names, problems, 1024)
        result["full_run_estimate_s"] = full
        print(f"this run took {elapsed:.0f} s; a full run (seeds {args.seeds}, epochs "
              f"{args.epochs or {p: PROBLEMS[p]['epochs'] for p in problems}}, predictions at 1024 layers) "
              f"would take about {full / 3600:.1f} h ({full:.0f} s)")
    write("bench_families", result, args.out)


if __name__ == "__main__":
    main()
