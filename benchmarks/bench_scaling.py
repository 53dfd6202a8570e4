"""Every solver at P = 1, 2, 4, 8 ranks, measured against the performance model's prediction.

    OCNET_MALLOC=tuned python benchmarks/bench_scaling.py [--ranks 1,2,4,8] [--solvers serial,...]
        [--epochs 2] [--repeats 3] [--target 0.8] [--out FILE.json]

Each solver variant of :data:`ocnet.perf.speedup.VARIANTS` runs as ``mpiexec -n P python -m
ocnet.run`` on a small convolutional problem (digits as 8×8 images, ``--layers`` conv layers
of ``--channels`` channels), one thread per rank, ``--repeats`` times, in rounds.  Measured:
the median time per step (from the iteration records' wall times), then the job whose step
is the median over the rounds gives the step, the time per epoch and the time to the target
test accuracy.  P above this machine's core count is flagged as oversubscribed.  The model is
calibrated here, in this process (one thread), and predicts the same configurations; the
benchmark prints the model's error per P and draws the predictions over the measurements
(``<out>.png``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, allocator, mpiexec, tune_malloc, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ocnet.perf import calibrate as cal  # noqa: E402
from ocnet.perf import speedup  # noqa: E402
from ocnet.runs.config import given  # noqa: E402
from ocnet.solvers import get  # noqa: E402


def busy_seconds() -> float | None:
    """CPU seconds every core of the machine has been busy since boot (``/proc/stat``)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and of its finished children (a run's ranks among them)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(flags: list[str], P: int, out: Path) -> dict:
    """One ``ocnet.run`` job; time per step, per epoch and to each epoch's accuracy, and the
    cores other processes kept busy meanwhile (``other_load``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", str(P), sys.executable, "-m", "mpi4py", "-m", "ocnet.run",
           *flags, "--threads", "1", "--quiet", "--out", str(out)]
    busy0, own0, t0 = busy_seconds(), own_seconds(), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    busy1, own1, wall = busy_seconds(), own_seconds(), time.perf_counter() - t0
    other = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if line.strip()]
    iters = [r for r in records if r["kind"] == "iter"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps = [b["wall_time"] - a["wall_time"] for a, b in zip(iters, iters[1:]) if b["epoch"] == a["epoch"]]
    return {"step": statistics.median(steps) if steps else None,
            "epoch": epochs[-1]["wall_time"] / len(epochs),
            "accuracy": [(r["wall_time"], r.get("test_acc")) for r in epochs], "other_load": other}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2,4,8")
    parser.add_argument("--solvers", default=",".join(speedup.VARIANTS))
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.8, help="test accuracy for the time-to-accuracy column")
    parser.add_argument("--max-other-load", type=float, default=0.15,
                        help="repeat a run during which other processes kept more cores busy than this")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of a calibration and every job (each solver at each P); the model's costs "
                             "and a job's figures are the medians over them")
    parser.add_argument("--calibration", default=None,
                        help="the JSON of an earlier run of this benchmark: its calibration, instead of new ones")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    tuned = tune_malloc() if allocator() == "tuned" else False
    ranks = [int(p) for p in args.ranks.split(",")]
    names = args.solvers.split(",")
    cores = os.cpu_count() or 1
    base = ["--problem", "digits", "--net", "conv", "--layers", str(args.layers), "--channels", str(args.channels),
            "--batch-size", str(args.batch), "--epochs", str(args.epochs)]

    values = given(base + ["--micro-batches", str(args.micro_batches)])
    config = speedup.variant_config(values, speedup.VARIANTS["serial"])
    configs = {n: speedup.variant_config(values, speedup.VARIANTS[n]) for n in names}
    batches = {speedup.compute_batch(c) for c in configs.values()}
    mgrit = {(c["coarsening"], c["mgrit_levels"]) for c in configs.values() if c["solver"] == "mgrit"}
    # Every job once per round, the rounds one after the other, each round after a calibration
    # of its own: a load that comes and goes (other machines' jobs on the same host are not
    # seen in this one's /proc/stat) falls on one round's calibration or job, and the medians
    # over the rounds leave it out.
    given_calibration = json.loads(Path(args.calibration).read_text())["calibration"] if args.calibration else None
    calibrations: list[dict] = []
    jobs = {}
    for name in names:
        variant = speedup.VARIANTS[name]
        flags = base + [f"--{k.replace('_', '-')}={v}" for k, v in variant.items()]
        if "micro_batches" in configs[name]:  # as the prediction has them (serial, AMP, MG/Opt on serial)
            flags += ["--micro-batches", str(args.micro_batches)]
        for P in ranks:
            try:  # a job the solver refuses at this P (local parallelism with an overlap at P = 1)
                get(configs[name]["solver"]).partition(args.layers, P, configs[name])
            except ValueError as e:
                print(f"{name:<15} P={P}: not run ({e})", flush=True)
                continue
            jobs[name, P] = flags
    runs: dict[tuple[str, int], list[dict]] = {key: [] for key in jobs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            if given_calibration is None:
                # each variant's own real steps at P = 1: time outside spans, exact MGRIT's iterations
                t0 = time.perf_counter()
                calibrations.append(cal.calibrate(config, batches, sorted(mgrit), profiles=configs))
                print(f"round {r + 1}/{args.repeats}: calibrated in {time.perf_counter() - t0:.1f} s", flush=True)
            for (name, P), flags in jobs.items():
                tries = [measure(flags, P, Path(tmp) / f"{name}-{P}-{r}-0")]
                while (tries[-1].get("other_load") or 0.0) > args.max_other_load and len(tries) <= args.retries:
                    tries.append(measure(flags, P, Path(tmp) / f"{name}-{P}-{r}-{len(tries)}"))
                m = min(tries, key=lambda t: t.get("other_load") or 0.0)
                m["tries"] = len(tries)
                runs[name, P].append(m)
                print(f"round {r + 1}/{args.repeats} {name:<15} P={P}: step {_s(m.get('step'))}"
                      f"{'  ' + m['error'] if 'error' in m else ''}", flush=True)
    calibration = given_calibration or cal.median(calibrations)
    prediction = speedup.predict(values, calibration, max_ranks=max(ranks), cores=cores, variants=names,
                                 recommend=False)

    rows = []
    measured: dict[str, dict[int, float]] = {}
    for (name, P), ms in runs.items():
        ok = sorted((m for m in ms if m.get("step")), key=lambda m: m["step"])
        m = ok[(len(ok) - 1) // 2] if ok else ms[0]  # the median round's job (the lower of two)
        m = {**m, "steps": [x["step"] for x in ok], "tries": sum(x["tries"] for x in ms)}
        pred = prediction["solvers"][name]["per_rank_count"].get(str(P), {})
        row = {"solver": name, "P": P, "oversubscribed": P > cores, **m, "predicted_step": pred.get("step"),
               "predicted_epoch": pred.get("epoch"), "skipped": pred.get("skipped")}
        if m.get("step") and pred.get("step"):
            row["model_error"] = pred["step"] / m["step"] - 1  # "error" is a failed run's message
        hit = [t for t, acc in m.get("accuracy", []) if acc is not None and acc >= args.target]
        row["time_to_target"] = hit[0] if hit else None
        rows.append(row)
        over = " (oversubscribed)" if P > cores else ""
        spread = "/".join(f"{x:.3g}" for x in m["steps"])
        print(f"{name:<15} P={P}: measured step {_s(m.get('step'))} ({spread}), predicted {_s(pred.get('step'))}, "
              f"error {_pct(row.get('model_error'))}, epoch {_s(m.get('epoch'))}, to {args.target:.0%} "
              f"{_s(row['time_to_target'])}, other load {_f(m.get('other_load'))} ({m['tries']} jobs)"
              f"{over}{'  ' + m['error'] if 'error' in m else ''}", flush=True)
    t1 = next((r["step"] for r in rows if r["solver"] == "serial" and r["P"] == 1 and r.get("step")), None)
    for r in rows:
        if t1 and r.get("step"):
            measured.setdefault(r["solver"], {})[r["P"]] = t1 / r["step"]
    path = write("bench_scaling", {"allocator": allocator(), "malloc_tuned": tuned, "cores": cores, "args": vars(args),
                                   "calibration": calibration, "rows": rows, "prediction": prediction}, args.out)
    png = Path(args.out).with_suffix(".png") if args.out else RESULTS / "bench_scaling.png"
    speedup.plot(prediction, png, measured)
    print(f"wrote {png}")
    print(path)


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g} s"


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.0%}"


if __name__ == "__main__":
    main()
