"""The checks that need a GPU, in one go (``make check-gpu``), with one summary table.

    python benchmarks/check_gpu.py [--budget SECONDS]

On a machine with CUDA:

1. the device-dependent tests (those that take the ``device`` fixture) with
   ``OCNET_TEST_DEVICE=cuda``;
2. the default run, ``mpirun -n P python -m ocnet.run --device cuda``, at P = 1, 2, 4 (each rank
   its own GPU, ``cuda:local_rank % n_gpus``, or all on one), a few epochs;
3. the serial and MGRIT solvers on a convolutional network at P = 1 and 2, one thread per rank,
   timed per optimiser step on the GPU beside the same runs on the CPU;
4. ``benchmarks/bench_scaling.py`` at P = 1, 2, 4, 8, 16 on the CPU cores (``make
   check-scaling``, one epoch): every solver's measured speed-up against the performance
   model's prediction, where ranks up to 16 have cores of their own (written to
   ``benchmarks/results/check_gpu_scaling.json``).

Prints one table and writes ``benchmarks/results/check_gpu.json``. On a machine without CUDA
it says so and exits 0 without running anything. Each part is skipped when the budget
(default 8 minutes) would run out, and the table says so.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ocnet.runs.launcher import launch, run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: The rank counts of part 4, as ``make check-scaling`` runs them (a machine of 16 cores).
SCALING_RANKS = "1,2,4,8,16"
# A convolutional network on the digits' 8×8 images, big enough for the GPU to matter little
# and small enough for a minute: the timing is a check that the device path works at speed.
CONV = ["--net", "conv", "--channels", "32", "--layers", "16", "--epochs", "1", "--limit-batches", "12",
        "--batch-size", "256", "--quiet", "--timeline-steps", "0", "--threads", "1"]


def step_times(out: Path) -> list[float]:
    """Wall time of each optimiser step after the first (warm-up), from ``history.jsonl``."""
    walls = [json.loads(line)["wall_time"] for line in (out / "history.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "iter"]
    return [b - a for a, b in zip(walls[1:], walls[2:])]


def scaling(left, row, env: dict[str, str]) -> None:
    """Part 4: ``bench_scaling.py`` at :data:`SCALING_RANKS`, one row per solver: its measured
    speed-up at the largest P over serial at P = 1 and the model's error there."""
    what = f"bench_scaling, CPU, P={SCALING_RANKS}"
    if left() < 120:
        row(what, "skipped", "budget spent")
        return
    out = RESULTS / "check_gpu_scaling.json"
    try:
        proc = run([sys.executable, "benchmarks/bench_scaling.py", "--ranks", SCALING_RANKS, "--epochs", "1",
                    "--out", str(out)], timeout=left(), env={**env, "OCNET_MALLOC": "tuned"}, cwd=ROOT)
    except TimeoutError:
        row(what, "skipped", "budget spent before it finished")
        return
    if proc.returncode != 0:
        row(what, "FAILED", proc.stderr.strip()[-200:])
        return
    rows = json.loads(out.read_text())["rows"]
    t1 = next((r["step"] for r in rows if r["solver"] == "serial" and r["P"] == 1 and r.get("step")), None)
    for solver in dict.fromkeys(r["solver"] for r in rows):
        done = [r for r in rows if r["solver"] == solver and r.get("step")]
        if not done:
            row(f"scaling {solver}", "FAILED", next((r.get("error", "") for r in rows if r["solver"] == solver), ""))
            continue
        top = done[-1]
        error = f", model {top['model_error']:+.0%}" if top.get("model_error") is not None else ""
        row(f"scaling {solver}, P=1…{top['P']}", "ok",
            f"P={top['P']}: step {1e3 * top['step']:.1f} ms, {t1 / top['step']:.2f}× serial P=1{error}"
            if t1 else f"P={top['P']}: step {1e3 * top['step']:.1f} ms{error}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for everything")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("check-gpu: no CUDA device on this machine; nothing to check")
        return 0
    start, rows, failed = time.monotonic(), [], False
    left = lambda: args.budget - (time.monotonic() - start)  # noqa: E731
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def row(what: str, status: str, figure: str = "") -> None:
        nonlocal failed
        failed |= status == "FAILED"
        rows.append({"check": what, "status": status, "figure": figure})
        print(f"{what:<46} {status:<8} {figure}", flush=True)

    print(f"check-gpu: {torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    proc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "device", "tests"],
               timeout=max(60.0, left() / 3), env={**env, "OCNET_TEST_DEVICE": "cuda"}, cwd=ROOT)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    row("device tests, OCNET_TEST_DEVICE=cuda", "ok" if proc.returncode == 0 else "FAILED", summary)
    with tempfile.TemporaryDirectory() as tmp:
        for p in (1, 2, 4):
            if left() < 60:
                row(f"default run, --device cuda, P={p}", "skipped", "budget spent")
                continue
            out = Path(tmp) / f"default-P{p}"
            proc = launch(p, [sys.executable, "-m", "ocnet.run", "--device", "cuda", "--epochs", "3", "--quiet",
                              "--out", str(out)], timeout=left(), env=env, cwd=ROOT)
            acc = json.loads((out / "summary.json").read_text())["final_test_acc"] if proc.returncode == 0 else None
            row(f"default run, --device cuda, P={p}", "ok" if proc.returncode == 0 else "FAILED",
                f"test acc {100 * acc:.2f} %" if acc is not None else proc.stderr.strip()[-200:])
        for solver in ("serial", "mgrit"):
            for p in (1, 2):
                medians = {}
                for device in ("cuda", "cpu"):
                    if left() < 45:
                        break
                    out = Path(tmp) / f"{solver}-{device}-P{p}"
                    proc = launch(p, [sys.executable, "-m", "ocnet.run", "--solver", solver, "--device", device,
                                      *CONV, "--out", str(out)], timeout=left(), env=env, cwd=ROOT)
                    if proc.returncode != 0:
                        row(f"{solver} conv, {device}, P={p}", "FAILED", proc.stderr.strip()[-200:])
                        break
                    medians[device] = statistics.median(step_times(out))
                if len(medians) == 2:
                    row(f"{solver} conv 16×32ch, P={p}, step time", "ok",
                        f"cuda {1e3 * medians['cuda']:.1f} ms, cpu {1e3 * medians['cpu']:.1f} ms "
                        f"({medians['cpu'] / medians['cuda']:.1f}× faster on the GPU)")
                elif not failed:
                    row(f"{solver} conv, P={p}, step time", "skipped", "budget spent")
    scaling(left, row, env)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "check_gpu.json").write_text(json.dumps({"device": torch.cuda.get_device_name(0), "rows": rows,
                                                        "seconds": time.monotonic() - start}, indent=2) + "\n")
    print(f"check-gpu: {sum(r['status'] == 'ok' for r in rows)} ok, {sum(r['status'] == 'FAILED' for r in rows)} "
          f"failed, {sum(r['status'] == 'skipped' for r in rows)} skipped in {time.monotonic() - start:.0f} s; "
          f"wrote {RESULTS / 'check_gpu.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
