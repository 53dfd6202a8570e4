"""Multilevel in depth against training the network alone: time and epochs to a target accuracy.

    OCNET_MALLOC=tuned python benchmarks/bench_multilevel.py [--problems digits,mnist1d]
        [--methods single,nested,mgopt] [--ranks 1,2] [--seeds 0,1,2] [--epochs E]
        [--target ACC] [--out FILE.json]

(it starts its own ``mpiexec`` jobs, one thread per rank, as ``bench_families.py`` does).  Each
method of :data:`METHODS` trains each problem of :data:`PROBLEMS` (the networks of
``bench_families.PROBLEMS``: digits' conv net of 16 channels, MNIST-1D's conv1d net of 32
channels, both 16 layers on [0, 4], Adam 3e-3, batch 64; here 10 epochs each) as ``mpiexec -n
P python -m ocnet.run``, once per seed and per P:

``single``       the serial solver on the network alone;
``nested``       nested iteration, ``--nested 4,2,1 --nested-epochs 2,2`` (4 layers for 2 epochs,
                 8 layers for 2, 16 layers for the rest of the same total epochs), linear
                 interpolation in depth, serial solver on every level;
``mgopt``        MG/Opt V-cycles in depth around the serial solver, the defaults (2 levels,
                 coarsening 2, one pre-smoothing step, one coarse step, Armijo line search);
``mgopt-mgrit``  the same around MGRIT (two-level, coarsening 2, one-shot, 2 iterations).

Without ``--val-split`` every epoch record holds the test accuracy, so every epoch is a point
of the accuracy curve.  Per (problem, method, P), each seed and the median over the seeds:

* final test accuracy;
* epochs and wall time (the epoch record's ``wall_time``, from the start of training, the
  epochs' evaluations included) to the target test accuracy, ``null`` where a seed never
  reaches it; the target is ``--target`` or, by default, :data:`TARGET_FRACTION` of the median
  final test accuracy of ``single`` at P = 1 on that problem (one target for every method and
  P of a problem);
* the same to the strict target, :data:`STRICT_FRACTION` of that median ("equivalent
  accuracy");
* total wall time of training, time per epoch (median over the epochs; nested's epochs
  differ by level, so it is also given per level), time per step (median over the steps);
* the ratio of the median time to each target to ``single``'s at the same P (below 1: faster;
  the speedup of more than three reported for MG/Opt is a ratio below 1/3).

Writes ``results/bench_multilevel.json`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_families import PROBLEMS as NETWORKS  # noqa: E402
from bench_families import _f, reach, text, train  # noqa: E402
from common import allocator, refuse_mpiexec, refuse_unknown, tune_malloc, write  # noqa: E402

#: Problem ↦ the network every method trains and the default epochs.
PROBLEMS: dict[str, dict[str, Any]] = {p: {"keys": NETWORKS[p]["keys"], "epochs": 10} for p in ("digits", "mnist1d")}
#: Method ↦ the configuration keys that make it.
METHODS: dict[str, dict[str, Any]] = {
    "single": {"solver": "serial"},
    "nested": {"solver": "serial", "nested": "4,2,1", "nested_epochs": "2,2", "nested_interpolate": "linear"},
    "mgopt": {"solver": "mgopt", "inner": "serial"},
    "mgopt-mgrit": {"solver": "mgopt", "inner": "mgrit", "mgrit_levels": 2, "coarsening": 2,
                    "mgrit_mode": "one_shot", "mgrit_iters": 2},
}
TARGET_FRACTION = 0.9  # of single's median final test accuracy at P = 1
STRICT_FRACTION = 0.98


def run(keys: dict[str, Any], P: int, seed: int, epochs: int, out: Path) -> dict[str, Any]:
    """One job (``bench_families.train``), its curve given each epoch's level and the summary's levels."""
    r = train(keys, P, seed, epochs, 0, out)
    if "error" in r:
        return r
    records = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines() if x.strip()]
    ends = [x for x in records if x["kind"] == "epoch"]
    for c, e in zip(r["curve"], ends):
        c["level"] = e.get("level")
    r["levels"] = json.loads((out / "summary.json").read_text()).get("levels")
    walls = [c["wall_time"] for c in r["curve"]]
    per: dict[str, list[float]] = {}
    for c, d in zip(r["curve"], (b - a for a, b in zip([0.0, *walls], walls))):
        per.setdefault(str(c["level"]), []).append(d)
    r["epoch_s_per_level"] = {k: statistics.median(v) for k, v in per.items()}
    r["steps"] = sum(1 for x in records if x["kind"] == "iter")
    return r


def med(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarise(runs: list[dict[str, Any]], targets: dict[str, float | None]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    levels: dict[str, list[float]] = {}
    for r in ok:
        for k, v in r["epoch_s_per_level"].items():
            levels.setdefault(k, []).append(v)
    return {"final_test_acc": {"median": med([r["final_test_acc"] for r in ok]),
                               "per_seed": [r["final_test_acc"] for r in ok]},
            "wall_s": med([r["wall_s"] for r in ok]), "process_s": med([r["process_s"] for r in ok]),
            "epoch_s": med([r["epoch_s"] for r in ok]), "step_s": med([r["step_s"] for r in ok]),
            "epoch_s_per_level": {k: statistics.median(v) for k, v in levels.items()},
            "to_target": {name: reach(ok, t) for name, t in targets.items()},
            "errors": [f"seed {r['seed']}: {r['error']}" for r in runs if "error" in r]}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def header() -> list[str]:
    return ["problem", "method", "P", "test acc % (median; seeds)", "epochs to T (reached)", "s to T",
            "s to T / single", "epochs to T98 (reached)", "s to T98", "s to T98 / single", "total s", "s/epoch",
            "s/step"]


def cells(row: dict[str, Any]) -> list[str]:
    m = row["measured"]
    acc = m["final_test_acc"]
    seeds = "/".join(f"{100 * a:.1f}" for a in acc["per_seed"])
    t, s = m["to_target"]["target"], m["to_target"]["strict"]
    per = m["epoch_s_per_level"]
    epoch = _f(m["epoch_s"], ".3g") if len(per) <= 1 else "/".join(
        f"{_f(per[k], '.2g')}" for k in sorted(per, key=lambda k: int(k) if k.isdigit() else 0))
    return [row["problem"], row["method"], str(row["ranks"]), f"{_f(acc['median'], '.1f', 100)} ({seeds})",
            f"{_f(t['epochs'], '.3g')} ({t['reached']})", _f(t["wall_time"], ".3g"), _f(row.get("ratio_target"), ".2f"),
            f"{_f(s['epochs'], '.3g')} ({s['reached']})", _f(s["wall_time"], ".3g"), _f(row.get("ratio_strict"), ".2f"),
            _f(m["wall_s"], ".3g"), epoch, _f(m["step_s"], ".3g")]


def model(problem: str, layers: int, max_ranks: int) -> dict[str, Any]:
    """The performance model's step time of each method on ``problem``'s network at ``layers``
    layers, P = 1, 2, 4, … ``max_ranks`` (one core per rank; nested: its levels' steps
    weighted by their epochs), from a calibration made here."""
    from bench_families import flags, n_train

    from ocnet.perf import calibrate as cal
    from ocnet.perf import speedup
    from ocnet.runs.config import given

    n_train(problem)
    keys = {**PROBLEMS[problem]["keys"], "layers": layers, "epochs": PROBLEMS[problem]["epochs"]}
    base = speedup.variant_config(given(flags(keys)), speedup.VARIANTS["serial"])
    calibration = cal.calibrate(base, {speedup.compute_batch(base)}, [], with_coverage=False)
    out: dict[str, Any] = {"layers": layers, "calibration": calibration, "methods": {}}
    for name in ("single", "nested", "mgopt"):
        method = {k: v for k, v in METHODS[name].items() if k != "solver"}
        variant = "mgopt" if METHODS[name]["solver"] == "mgopt" else "serial"
        p = speedup.predict(given(flags({**keys, **method})), calibration, max_ranks=max_ranks, cores=max_ranks,
                            variants=[variant], recommend=False)
        out["methods"][name] = {P: row.get("step") for P, row in p["solvers"][variant]["per_rank_count"].items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--methods", default="single,nested,mgopt", help=f"of {', '.join(METHODS)}")
    ap.add_argument("--ranks", default="1,2", help="P of the runs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=0, help="epochs of every run, all levels together (0: 10)")
    ap.add_argument("--target", type=float, default=None,
                    help=f"test accuracy (a fraction) to reach; default {100 * TARGET_FRACTION:.0f} %% of single's "
                    "median final at P = 1 (the strict target is then the given one)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--model-layers", type=int, default=0,
                    help="also the performance model's step times at this many layers, P = 1 … --model-ranks")
    ap.add_argument("--model-ranks", type=int, default=64)
    ap.add_argument("--model-only", action="store_true", help="the model alone, no training runs")
    args = ap.parse_args()
    if args.model_layers:
        predicted = {p: model(p, args.model_layers, args.model_ranks) for p in args.problems.split(",")}
        for p, m in predicted.items():
            print(f"\nmodel, {p}, {m['layers']} layers: seconds per step (ratio to single at the same P)")
            for name, steps in m["methods"].items():
                single = m["methods"]["single"]
                print(f"  {name:<8}" + "  ".join(f"P={P}: {t:.3g} ({t / single[P]:.2f})" for P, t in steps.items()
                                                 if t is not None and single.get(P)))
        if args.model_only:
            write("bench_multilevel_model", {"model": predicted, "args": vars(args)}, args.out)
            return
    refuse_mpiexec("bench_multilevel.py")
    names, problems = args.methods.split(","), args.problems.split(",")
    refuse_unknown("method", names, METHODS, problems, PROBLEMS)
    if "single" not in names and args.target is None:
        sys.exit("without single the target needs --target")
    ranks, seeds = [int(p) for p in args.ranks.split(",")], [int(s) for s in args.seeds.split(",")]
    names = ["single", *[n for n in names if n != "single"]] if "single" in names else names
    tuned = tune_malloc() if allocator() == "tuned" else False
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for problem in problems:
            epochs = args.epochs or PROBLEMS[problem]["epochs"]
            settings[problem] = {"keys": PROBLEMS[problem]["keys"], "epochs": epochs}
            for P in ranks:
                for name in names:
                    keys = {**PROBLEMS[problem]["keys"], **METHODS[name]}
                    runs = [run(keys, P, s, epochs, Path(tmp) / f"{problem}-{name}-{P}-{s}") for s in seeds]
                    rows.append({"problem": problem, "method": name, "ranks": P, "keys": METHODS[name], "runs": runs})
                    ok = [r for r in runs if "error" not in r]
                    errors = [f"seed {r['seed']}: {r['error']}" for r in runs if "error" in r]
                    accs = "/".join(f"{100 * r['final_test_acc']:.1f}" for r in ok)
                    walls = "/".join(f"{r['wall_s']:.1f}" for r in ok)
                    print(f"{problem:<8} {name:<12} P={P} test acc {accs} %, wall {walls} s"
                          + "".join(f"\n    {e}" for e in errors), flush=True)
    for problem in problems:
        single = [x["final_test_acc"] for r in rows if r["problem"] == problem and r["method"] == "single"
                  and r["ranks"] == min(ranks) for x in r["runs"] if "error" not in x]
        base = statistics.median(single) if single else None
        if args.target is not None:
            targets = {"target": args.target, "strict": args.target}
            source = "--target"
        else:
            targets = {"target": TARGET_FRACTION * base if base else None,
                       "strict": STRICT_FRACTION * base if base else None}
            source = (f"{TARGET_FRACTION:.0%} and {STRICT_FRACTION:.0%} of single's median final test accuracy "
                      f"at P = {min(ranks)}")
        settings[problem].update({"single_median_final": base, "targets": targets, "target_from": source})
        for r in rows:
            if r["problem"] == problem:
                r["measured"] = summarise(r["runs"], targets)
    for r in rows:
        ref = next((x for x in rows if x["problem"] == r["problem"] and x["ranks"] == r["ranks"]
                    and x["method"] == "single"), None)
        if ref:
            for name in ("target", "strict"):
                r[f"ratio_{name}"] = ratio(r["measured"]["to_target"][name]["wall_time"],
                                           ref["measured"]["to_target"][name]["wall_time"])
    head = header()
    table = [cells(r) for r in rows]
    print()
    print(text(table, head))
    for problem in problems:
        t = settings[problem]["targets"]
        print(f"{problem}: T = {_f(t['target'], '.1f', 100)} %, T98 = {_f(t['strict'], '.1f', 100)} % "
              f"({settings[problem]['target_from']})")
    print("s/epoch of nested: per level, coarse to fine; s to T: the epoch record's wall_time, evaluation included")
    elapsed = time.perf_counter() - started
    print(f"\nthis run took {elapsed:.0f} s (allocator {allocator()})")
    write("bench_multilevel", {"allocator": allocator(), "malloc_tuned": tuned, "args": vars(args), "ranks": ranks,
                               "seeds": seeds, "problems": settings, "methods": {n: METHODS[n] for n in names},
                               "rows": rows, "table": {"header": head, "rows": table}, "seconds": elapsed}, args.out)


if __name__ == "__main__":
    main()
