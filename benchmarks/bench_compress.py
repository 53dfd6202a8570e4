"""Compression of the gradient exchange: bytes sent against accuracy, on D data groups.

    OCNET_MALLOC=tuned .venv/bin/python benchmarks/bench_compress.py [--problems digits,mnist1d]
        [--compressors none,topk,adacomp] [--groups 2,4] [--seeds 0,1,2] [--epochs 10] [--out FILE]

Each compressor (``--compress``, defaults of its own options) trains each problem of
``bench_families.PROBLEMS`` (one network per problem: digits conv, MNIST-1D conv1d) with the
serial solver on ``D`` data groups of one layer rank each (``mpiexec -n D … --data-parallel
D``), once per seed.  With one layer rank per group, every byte a rank sends belongs to the
gradient exchange, so the history's ``bytes_sent`` per step is the exchange's, as the
communicators counted it (compressed messages at their compressed size).  Reported per problem,
D and compressor: the final test accuracy (mean ± sd over the seeds and each seed), bytes per
step, the compression ratio (bytes of ``none`` over bytes of the compressor, same problem and
D), and time per epoch (D above the core count is oversubscribed: read its times as such).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_families import PROBLEMS, mean_sd, train  # noqa: E402
from common import allocator, write  # noqa: E402


def row(problem: str, D: int, name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]

    def med(key: str) -> float | None:
        values = [r[key] for r in ok if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {"problem": problem, "groups": D, "compressor": name, "runs": runs,
            "final_test_acc": mean_sd([r["final_test_acc"] for r in ok]),
            "bytes_per_step": med("bytes_per_step"), "epoch_s": med("epoch_s"),
            "errors": [f"seed {r['seed']}: {r['error']}" for r in runs if "error" in r]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default="digits,mnist1d")
    ap.add_argument("--compressors", default="none,topk,adacomp")
    ap.add_argument("--groups", default="2,4", help="data groups D (one layer rank each)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    problems, names = args.problems.split(","), args.compressors.split(",")
    groups, seeds = [int(d) for d in args.groups.split(",")], [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for problem in problems:
            for D in groups:
                for name in names:
                    keys = {**PROBLEMS[problem]["keys"], "solver": "serial", "data_parallel": D, "compress": name}
                    if name != "none":  # the sparse messages themselves, whatever the exchange would pick
                        keys["compress_exchange"] = "gather"
                    runs = [train(keys, D, s, args.epochs, 0, Path(tmp) / f"{problem}-{D}-{name}-{s}") for s in seeds]
                    rows.append(row(problem, D, name, runs))
                    r = rows[-1]
                    print(f"{problem:8s} D={D} {name:8s} acc {100 * (r['final_test_acc']['mean'] or 0):.1f} % "
                          f"bytes/step {r['bytes_per_step'] or 0:.0f} {' '.join(r['errors'])}", flush=True)
    base = {(r["problem"], r["groups"]): r["bytes_per_step"] for r in rows if r["compressor"] == "none"}
    for r in rows:
        dense = base.get((r["problem"], r["groups"]))
        r["ratio"] = dense / r["bytes_per_step"] if dense and r["bytes_per_step"] else None
    print(f"\n{'problem':8s} {'D':>2s} {'compressor':10s} {'test acc %':>14s} {'seeds':>20s} {'kB/step':>9s} "
          f"{'ratio':>7s} {'s/epoch':>8s}")
    for r in rows:
        acc = r["final_test_acc"]
        seeds_text = "/".join(f"{100 * a:.1f}" for a in acc["per_seed"])
        print(f"{r['problem']:8s} {r['groups']:2d} {r['compressor']:10s} "
              f"{100 * (acc['mean'] or 0):6.1f} ± {100 * (acc['sd'] or 0):4.1f} {seeds_text:>20s} "
              f"{(r['bytes_per_step'] or 0) / 1e3:9.1f} {r['ratio'] or 0:7.1f} {r['epoch_s'] or 0:8.2f}")
    seconds = time.perf_counter() - t0
    print(f"\nthis run took {seconds:.0f} s (allocator {allocator()})")
    write("bench_compress", {"problems": {p: PROBLEMS[p] for p in problems}, "epochs": args.epochs,
                             "seeds": seeds, "groups": groups, "allocator": allocator(), "rows": rows,
                             "seconds": seconds}, args.out)


if __name__ == "__main__":
    main()
