"""Draw the figures of docs/plots.rst from short runs of ocnet itself (``make docs`` runs it).

    python docs/figures.py [OUT_DIR]       # default docs/_figures

Four runs on the digits (one process, a few seconds each): the serial solver with a
validation split, MGRIT in exact mode, the hybrid (penalty epochs, then serial ones) and
one-shot MGRIT under accuracy control; then ``ocnet.plot`` draws each run's figures, and a
comparison of them all.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ocnet.plot import plot_runs  # noqa: E402
from ocnet.run import main  # noqa: E402

RUNS = {
    "serial": ["--epochs", "6", "--val-split", "0.2"],
    "mgrit": ["--solver", "mgrit", "--epochs", "4", "--mgrit-levels", "3", "--coarsening", "2"],
    "hybrid": ["--solver", "hybrid", "--epochs", "6"],
    "control": ["--solver", "mgrit", "--mgrit-mode", "one_shot", "--mgrit-levels", "3", "--coarsening", "2",
                "--mgrit-control", "iters", "--final-time", "4", "--epochs", "4"],
}


def draw(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for name, flags in RUNS.items():
            run = Path(tmp) / name
            if main([*flags, "--quiet", "--timeline-steps", "4", "--out", str(run)]) != 0:
                raise SystemExit(f"docs/figures.py: the {name} run failed")
            for path in plot_runs([run]):
                written.append(Path(shutil.copy(path, out / f"{name}_{path.name}")))
            dirs.append(run)
        written += plot_runs(dirs, out)
    return written


if __name__ == "__main__":
    for path in draw(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "_figures"):
        print(path)
