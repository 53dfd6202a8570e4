"""Draw the figures of the documentation from ocnet itself (``make docs`` runs it).

    python docs/figures.py [OUT_DIR]       # default docs/_figures

The drawing of the package's parts (docs/architecture.rst) comes from the imports of the code
as it is, read by grimp, and the order of the layers contract in pyproject.toml.

Five runs on the digits (one process, a few seconds each): the serial solver with a
validation split, MGRIT in exact mode, the hybrid (penalty epochs, then serial ones), local
parallelism and one-shot MGRIT under accuracy control; then ``ocnet.results.plot`` draws those of
each run's figures, and of the comparison of them all, that a page shows (``_figures/NAME.png``
in ``docs/*.rst``).
"""
from __future__ import annotations

import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grimp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ocnet.results.plot import figures  # noqa: E402
from ocnet.run import main  # noqa: E402

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib

RUNS = {
    "serial": ["--epochs", "6", "--val-split", "0.2"],
    "mgrit": ["--solver", "mgrit", "--epochs", "4", "--mgrit-levels", "3", "--coarsening", "2"],
    "hybrid": ["--solver", "hybrid", "--epochs", "6"],
    "local": ["--solver", "local", "--local-blocks", "4", "--local-overlap", "1", "--epochs", "4"],
    "control": ["--solver", "mgrit", "--mgrit-mode", "one_shot", "--mgrit-levels", "3", "--coarsening", "2",
                "--mgrit-control", "iters", "--final-time", "4", "--epochs", "4"],
}


def layers() -> list[list[str]]:
    """The parts of the layers contract, top first, each layer a list of its siblings."""
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    return [[name.strip() for name in layer.split("|")] for layer in contract["layers"]]


def part_imports() -> tuple[dict[str, list[str]], Counter]:
    """The modules of each part, and how many imports go from one part to another."""
    graph = grimp.build_graph("ocnet")
    part = lambda module: module.split(".")[1] if module.count(".") else None  # noqa: E731
    modules: dict[str, list[str]] = {}
    for m in sorted(graph.modules):
        if part(m) is not None and m.count(".") >= 1:
            modules.setdefault(part(m), []).append(m.split(".")[-1])
    edges: Counter = Counter()
    for m in graph.modules:
        for imported in graph.find_modules_directly_imported_by(m):
            a, b = part(m), part(imported)
            if a and b and a != b and imported.startswith("ocnet."):
                edges[a, b] += 1
    return modules, edges


def draw_parts(path: Path) -> Path:
    """The parts stacked in the contract's order, their modules, and an arrow for each pair of
    parts with imports between them (the more imports, the thicker)."""
    order, (modules, edges) = layers(), part_imports()
    fig, ax = plt.subplots(figsize=(10, 0.95 * len(order) + 0.6))
    box = {}  # part: (left, right, y)
    for row, siblings in enumerate(order):
        y, width = len(order) - 1 - row, 0.6 / len(siblings)
        for col, name in enumerate(siblings):
            left = 0.02 + col * width
            box[name] = (left, left + width - 0.01, y)
            inside = ", ".join(m for m in modules.get(name, []) if m not in (name, "__init__")) or "entry point"
            ax.add_patch(plt.Rectangle((left, y - 0.3), width - 0.01, 0.6, fc="#eef3fb", ec="#3465a4"))
            ax.text(left + width / 2, y + 0.13, name, ha="center", va="center", weight="bold", fontsize=11)
            ax.text(left + width / 2, y - 0.12, "\n".join(_wrap(inside, int(160 * width))), ha="center",
                    va="center", fontsize=7)
    # Each import between parts as an arc on the right, from the importer down to the imported.
    for (a, b), n in sorted(edges.items(), key=lambda e: box[e[0][0]][2] - box[e[0][1]][2]):
        if a in box and b in box:
            (_, ra, ya), (_, rb, yb) = box[a], box[b]
            ax.annotate("", xy=(rb, yb + 0.05), xytext=(ra, ya - 0.05),
                        arrowprops={"arrowstyle": "->", "color": "#777", "lw": 0.6 + 0.1 * n, "shrinkA": 0,
                                    "shrinkB": 0, "connectionstyle": f"arc3,rad={-0.25 - 0.04 * (ya - yb)}"})
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, len(order) - 0.5)
    ax.axis("off")
    ax.set_title("ocnet's parts: each imports only the parts below it (arrows: imports, thicker for more)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + len(word) > width:
            lines.append(line.rstrip())
            line = ""
        line += word + " "
    return lines + [line.rstrip()]


def shown() -> set[str]:
    """The figures the pages show: each ``_figures/NAME.png`` in ``docs/*.rst``."""
    return {m for page in (ROOT / "docs").glob("*.rst") for m in re.findall(r"_figures/(\w+\.png)", page.read_text())}


def draw(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    wanted = shown()
    written = [draw_parts(out / "architecture_parts.png")]

    def save(figs: dict, name: str) -> None:
        for kind, fig in figs.items():
            path = out / name.format(kind)
            if path.name in wanted:
                fig.savefig(path, dpi=110)
                written.append(path)

    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for name, flags in RUNS.items():
            run = Path(tmp) / name
            if main([*flags, "--quiet", "--plots", "false", "--out", str(run)]) != 0:
                raise SystemExit(f"docs/figures.py: the {name} run failed")
            save(figures([run]), name + "_{}.png")
            dirs.append(run)
        comparison = figures(dirs)
        save({"": comparison.pop("convergence")}, "comparison{}.png")
        save(comparison, "comparison_{}.png")
    return written


if __name__ == "__main__":
    for path in draw(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "_figures"):
        print(path)
