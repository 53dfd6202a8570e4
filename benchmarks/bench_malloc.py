"""Every solver with glibc's allocator thresholds raised (``--malloc tuned``) and as glibc sets them.

    python benchmarks/bench_malloc.py [--variants serial,...] [--ranks 1,2] [--repeats 3]
        [--batches 8] [--out FILE.json]

(it starts its own ``mpiexec`` jobs).  Each variant (the solver settings of
``bench_families.py``'s :data:`VARIANTS`) trains ``bench_families.py``'s MNIST-1D network (the
conv1d net of 32 channels, 16 layers on [0, 4], batch 64: a state of a batch is 320 KiB, above
glibc's initial mmap threshold of 128 KiB) for one epoch of ``--batches`` batches, as
``mpiexec -n P python -m ocnet.run --malloc tuned`` and ``--malloc glibc`` (one thread per
rank), ``--repeats`` times each at every P of ``--ranks``.  The two settings run back to
back, their order alternating from one repeat and variant to the next, so that a change in
the machine's load hits both alike.

Measured per run: the summary's ``wall_time`` (the epoch's training and evaluation, without
the start-up), the setting the summary says the run ran under (it must be the one asked
for), and each rank's peak resident memory: each rank runs under ``/usr/bin/time -f %M``
(the process's maximum resident set, ``ru_maxrss``, the Python interpreter and torch
included; ``python -m mpi4py`` leaves each rank one process, without ocnet's supervisor).
Reported per variant and P: the medians of each setting, the ratio of the medians tuned ÷
glibc (< 1: tuned is faster), and the largest rank's median peak memory of each setting.
The load average is recorded before, during (per run) and after.  Writes
``results/bench_malloc.json`` and prints the table and its reStructuredText.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_families import PROBLEMS, VARIANTS, flags  # noqa: E402
from common import mpiexec, refuse_mpiexec, refuse_unknown, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: The variants measured by default: every solver, local parallelism without overlap.
DEFAULT_VARIANTS = ("serial", "mgrit-exact", "mgrit-one-shot", "penalty", "al", "hybrid", "local-0", "amp")
SETTINGS = ("glibc", "tuned")
PROBLEM = "mnist1d"


def train(keys: dict[str, Any], P: int, malloc: str, batches: int, out: Path) -> dict[str, Any]:
    """One ``ocnet.run`` job under ``--malloc malloc``: its wall time, the setting its summary
    records and each rank's peak resident memory in MB (``error`` if it failed)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OCNET_MALLOC", "GLIBC_TUNABLES")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    rss_file = out.with_suffix(".rss")  # each rank appends its line
    rss_file.unlink(missing_ok=True)
    cmd = [mpiexec(), "-n", str(P), "/usr/bin/time", "-a", "-o", str(rss_file), "-f", "%M",
           sys.executable, "-m", "mpi4py", "-m", "ocnet.run", *flags(keys), "--epochs", "1",
           "--limit-batches", str(batches), "--threads", "1", "--quiet", "--plots", "none", "--timeline-steps", "0",
           "--malloc", malloc, "--overwrite", "--out", str(out)]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not (out / "summary.json").exists():
        lines = [x for x in (done.stderr + done.stdout).splitlines() if x.strip()]
        return {"error": (lines or [f"exit status {done.returncode}"])[-1]}
    summary = json.loads((out / "summary.json").read_text())
    rss = [int(x) / 1024 for x in rss_file.read_text().split() if x.isdigit()]
    return {"wall_s": summary["wall_time"], "ran_under": summary.get("malloc"), "peak_rss_mb_per_rank": rss,
            "load_1min": load}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of one setting's runs: wall time and each rank's peak memory."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"] if runs else "not run"}
    ranks = min(len(r["peak_rss_mb_per_rank"]) for r in ok)
    per_rank = [statistics.median(sorted(r["peak_rss_mb_per_rank"])[i] for r in ok) for i in range(ranks)]
    return {"wall_s": statistics.median(r["wall_s"] for r in ok), "peak_rss_mb_per_rank": per_rank,
            "peak_rss_mb": max(per_rank) if per_rank else None, "runs": len(ok)}


def table(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The plain table and its reStructuredText."""
    head = ["variant", "P", "glibc s", "tuned s", "tuned/glibc", "glibc MB", "tuned MB"]
    cells = []
    for r in rows:
        g, t = r["glibc"], r["tuned"]
        if "error" in g or "error" in t:
            cells.append([r["variant"], str(r["P"]), g.get("error", "") or t.get("error", "")])
            continue
        cells.append([r["variant"], str(r["P"]), f"{g['wall_s']:.2f}", f"{t['wall_s']:.2f}", f"{r['ratio']:.2f}",
                      f"{g['peak_rss_mb']:.0f}", f"{t['peak_rss_mb']:.0f}"])
    widths = [max(len(c[i]) if i < len(c) else 0 for c in [head, *cells]) for i in range(len(head))]
    plain = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *cells])
    rule = "  ".join("=" * w for w in widths)
    rst = "\n".join([rule, "  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip(), rule,
                     *("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells), rule])
    return plain, rst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, default=8, help="batches of the one epoch each run trains")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    refuse_mpiexec("bench_malloc.py")
    names = args.variants.split(",")
    refuse_unknown("variant", names, VARIANTS, [PROBLEM], PROBLEMS)
    if not Path("/usr/bin/time").exists():
        sys.exit("bench_malloc.py measures each rank's memory with /usr/bin/time, which this machine lacks")
    ranks = [int(p) for p in args.ranks.split(",")]
    load_before = os.getloadavg()
    started = time.perf_counter()
    runs: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        turn = 0
        for repeat in range(args.repeats):
            for P in ranks:
                for name in names:
                    order = SETTINGS if turn % 2 == 0 else SETTINGS[::-1]
                    turn += 1
                    for malloc in order:
                        keys = {**PROBLEMS[PROBLEM]["keys"], **VARIANTS[name]}
                        r = train(keys, P, malloc, args.batches, Path(tmp) / f"{name}-{P}-{malloc}")
                        if "error" not in r and r["ran_under"] != malloc:
                            r = {"error": f"asked for --malloc {malloc}, the summary says {r['ran_under']}"}
                        runs.setdefault((name, P, malloc), []).append({**r, "repeat": repeat})
                        print(f"{name:<15} P={P} {malloc:<6} repeat {repeat}: "
                              + (r["error"] if "error" in r else f"{r['wall_s']:.2f} s, peak "
                                 f"{'/'.join(f'{m:.0f}' for m in r['peak_rss_mb_per_rank'])} MB, "
                                 f"load {r['load_1min']:.2f}"), flush=True)
    elapsed = time.perf_counter() - started
    rows = []
    for P in ranks:
        for name in names:
            row: dict[str, Any] = {"variant": name, "P": P, "keys": VARIANTS[name],
                                   **{m: summarise(runs[(name, P, m)]) for m in SETTINGS},
                                   "runs": {m: runs[(name, P, m)] for m in SETTINGS}}
            if "wall_s" in row["glibc"] and "wall_s" in row["tuned"]:
                row["ratio"] = row["tuned"]["wall_s"] / row["glibc"]["wall_s"]
                row["peak_rss_ratio"] = row["tuned"]["peak_rss_mb"] / row["glibc"]["peak_rss_mb"]
            rows.append(row)
    plain, rst = table(rows)
    load_after = os.getloadavg()
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    faster = sum(x < 1 for x in ratios)
    print(f"\n{plain}\n\ntuned faster in {faster} of {len(ratios)}; median ratio "
          f"{statistics.median(ratios) if ratios else float('nan'):.2f}; load {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; {elapsed:.0f} s\n\n{rst}\n")
    write("bench_malloc", {
        "problem": PROBLEM, "keys": PROBLEMS[PROBLEM]["keys"], "batches": args.batches, "epochs": 1,
        "repeats": args.repeats, "ranks": ranks, "threads_per_rank": 1,
        "wall_time": "summary.json's wall_time: the epoch's training and evaluation, start-up excluded",
        "peak_memory": "max RSS of each rank's process, by /usr/bin/time -f %M around it (interpreter and torch "
                       "included); peak_rss_mb is the largest over ranks of the per-rank medians",
        "load_before": load_before, "load_after": load_after, "seconds": elapsed,
        "tuned_faster": f"{faster}/{len(ratios)}", "median_ratio": statistics.median(ratios) if ratios else None,
        "rows": rows}, args.out)


if __name__ == "__main__":
    main()
