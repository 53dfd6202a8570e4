"""MGRIT's accuracy control during training: fixed one-shot iterations against the two ways of
acting on the inexactness estimate, on a vision transformer and on a convolutional net.

    python benchmarks/bench_accuracy_control.py [--ranks 2] [--epochs 10] [--out FILE.json]

(it starts its own ``mpiexec`` jobs).  Both nets train on digits with 16 layers on [0, 4]
(a step h = 1/4: one-shot MGRIT is far from exact there), Adam at 3e-3 with a cosine
schedule.  Runs, for each net:

``serial``          exact back-propagation through the ranks;
``fixed``           MGRIT one-shot, 3 levels, c = 2, one iteration per solve, always;
``iters``           the same with ``--mgrit-control iters`` (one iteration more after an epoch
                    whose mean inexactness exceeded 0.05);
``hybrid``          the same MGRIT as the hybrid's parallel solver with ``--switch adaptive``
                    (serial epochs for the rest of the run once the estimate exceeds 0.05).

For each run and epoch: test accuracy, wall time, and the step evaluations so far (MGRIT's
are counted by its solves; a serial step costs N forward and N backward steps).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAYERS = 16
NETS = {
    "transformer": ["--net", "transformer", "--width", "32", "--heads", "4"],
    "conv": ["--net", "conv", "--channels", "16"],
}
MGRIT = ["--mgrit-mode", "one_shot", "--mgrit-iters", "1", "--mgrit-levels", "3", "--coarsening", "2"]


def runs(epochs: int) -> dict[str, list[str]]:
    return {"serial": ["--solver", "serial"], "fixed": ["--solver", "mgrit", *MGRIT],
            "iters": ["--solver", "mgrit", *MGRIT, "--mgrit-control", "iters"],
            "hybrid": ["--solver", "hybrid", "--parallel", "mgrit", "--switch", "adaptive",
                       "--serial-epochs", str(epochs), *MGRIT]}


def train(ranks: int, options: list[str], out: Path) -> list[dict]:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "ocnet.run", "--problem", "digits",
           "--layers", str(LAYERS), "--final-time", "4", "--schedule", "cosine", "--quiet",
           "--timeline-steps", "0", "--out", str(out), *options]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def curve(history: list[dict]) -> list[dict]:
    """Per epoch: test accuracy, wall time, step evaluations so far, and the iterations per
    solve of its last step (one-shot MGRIT)."""
    evals, iters, out = 0, None, []
    for r in history:
        if r["kind"] == "iter":
            evals += r.get("step_evals") or 2 * LAYERS
            iters = r.get("mgrit_iters")
        elif r["kind"] == "epoch":
            out.append({"epoch": r["epoch"], "test_acc": r["test_acc"], "wall_time": r["wall_time"],
                        "step_evals": evals, "mgrit_iters": iters})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result: dict = {"ranks": args.ranks, "epochs": args.epochs, "layers": LAYERS, "nets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for net, net_options in NETS.items():
            result["nets"][net] = {}
            for name, options in runs(args.epochs).items():
                history = train(args.ranks, [*net_options, "--epochs", str(args.epochs), *options],
                                Path(tmp) / f"{net}-{name}")
                c = result["nets"][net][name] = curve(history)
                phases = [r["phase"] for r in history if r["kind"] == "iter" and "phase" in r]
                serial_from = next((i for i, p in enumerate(phases) if p == "serial"), None)
                print(f"{net:11s} {name:7s} test acc {c[-1]['test_acc'] * 100:5.1f} %  "
                      f"{c[-1]['wall_time']:6.1f} s  {c[-1]['step_evals'] / 1e3:7.1f} k step evaluations"
                      + (f"  iterations per epoch {[e['mgrit_iters'] for e in c]}" if name == "iters" else "")
                      + (f"  serial from step {serial_from}" if name == "hybrid" else ""), flush=True)
    write("bench_accuracy_control", result, args.out)


if __name__ == "__main__":
    main()
