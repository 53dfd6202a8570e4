"""The trained classifier against the convex head (``--head convex``) on the same trained network:
test accuracy, the certified objective and the fit's cost.

    python benchmarks/bench_convex_head.py [--problems digits,mnist1d] [--seeds 0,1,2] [--epochs 0]
                                           [--out FILE.json]

Per problem and seed, one run of ``python -m ocnet.run`` on one process (serial solver, the
problem's default network, ``--epochs`` when given, else the default) with ``--head convex`` at
its defaults; the trained head and the convex head are scored on the same test set from the
same trained trunk (``summary.json``'s ``convex_head``). The table gives the median over the
seeds (each seed's value after it). Writes ``results/bench_convex_head.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

#: Problem ↦ its flags beyond the defaults (none: the run as a user starts it).
PROBLEMS = {"digits": [], "mnist1d": []}


def run(problem: str, seed: int, epochs: int, extra: list[str]) -> dict:
    """One run's summary (a temporary run directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--problem", problem, "--seed", str(seed), "--out", f"{tmp}/run", "--plots", "none",
                 "--quiet", "--head", "convex", *PROBLEMS[problem], *extra]
        if epochs:
            flags += ["--epochs", str(epochs)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "ocnet.run", *flags], check=True, env=env)
        return json.loads(Path(tmp, "run", "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="digits,mnist1d")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=0, help="epochs of each run (0: the default)")
    ap.add_argument("--out", default=None)
    args, extra = ap.parse_known_args()  # further flags go to every run (e.g. --convex-patterns 16)
    problems, seeds = args.problems.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = [p for p in problems if p not in PROBLEMS]
    if unknown:
        ap.error(f"unknown problems {unknown}: choose from {', '.join(PROBLEMS)}")
    rows = {}
    for problem in problems:
        summaries = [run(problem, seed, args.epochs, extra) for seed in seeds]
        heads = [s["convex_head"] for s in summaries]
        rows[problem] = {"seeds": seeds, "summaries": summaries}
        print(f"\n{problem} ({summaries[0]['epochs']} epochs, {heads[0]['samples']} samples × "
              f"{heads[0]['features']} features, {heads[0]['neurons']} neurons at seed {seeds[0]})")
        for key, label, scale in (("sgd_test_acc", "trained head, test acc %", 100),
                                  ("convex_test_acc", "convex head, test acc %", 100),
                                  ("sgd_train_acc", "trained head, train acc %", 100),
                                  ("convex_train_acc", "convex head, train acc %", 100),
                                  ("objective", "convex objective", 1), ("seconds", "convex fit, s", 1),
                                  ("iterations", "ADMM iterations (most)", 1)):
            values = [scale * h[key] for h in heads]
            print(f"  {label:28s} {statistics.median(values):10.2f}   ({', '.join(f'{v:.2f}' for v in values)})")
        train_s = [s["wall_time"] for s in summaries]
        print(f"  {'training, s':28s} {statistics.median(train_s):10.2f}   ({', '.join(f'{v:.2f}' for v in train_s)})")
        print(f"  statuses: {[h['status'] for h in heads]}")
    write("bench_convex_head", {"extra_flags": extra, "epochs": args.epochs, "problems": rows}, args.out)


if __name__ == "__main__":
    main()
