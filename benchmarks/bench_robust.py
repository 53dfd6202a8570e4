"""The ℓ∞-robust convex program against FGSM and PGD adversarial training: test accuracy, clean
and under attack, of one two-layer ReLU network trained four ways.

    python benchmarks/bench_robust.py [--tasks peaks,digits] [--seeds 0,1,2] [--out FILE.json]

Two binary tasks of :data:`TASKS`, inputs standardised as ``ocnet.model.data.load`` does (per
feature for ``peaks``, one mean and deviation for all pixels of ``digits``), attacked in that
space; per seed the data's draw or split, the sampled patterns and the initialisations change:

``peaks``   classes 1 and 3 of ocnet's ``peaks`` (two level sets, 2 features), the first 300
            training samples of the two, tested on all of their test samples;
``digits``  digits 3 and 8 of scikit-learn's 8×8 digits, all their training samples of the
            80/20 split (about 285), tested on their test samples; projected on the first 10
            principal components of the training samples, scaled to standard deviation 1, and
            attacked in that space. On the 64 raw pixels the program fits
            :data:`~ocnet.convex.cvx.MAX_SIZE` only with 9 patterns, and even with
            ``ocnet.convex.cvx.CLARABEL`` Clarabel failed on five of the six robust programs of ε = 0.05 and
            0.1 (seeds 0, 1, 2) and took 43 to 229 s at ε = 0.02.

Per task, radius ε and seed, four networks of the same architecture (hidden layer with bias,
logistic loss, labels ±1) and the same weight decay ``β/2 Σ (‖u_j‖² + α_j²)``:

``convex-robust``  :func:`~ocnet.convex.robust.solve_robust_cvxpy` at ε, recovered;
``fgsm-train``     :func:`~ocnet.convex.adversarial.train` against FGSM at ε;
``pgd-train``      the same against PGD (10 steps) at ε;
``convex-nominal`` the nominal program (ε = 0), the reference without robust training.

The convex programs share the patterns: ``P`` sampled from the training data plus the all-
firing pattern (:func:`~ocnet.convex.robust.with_linear_pattern`); the gradient-trained networks
have the fixed width ``2 (P + 1)``, the most neurons the programs can use, from PyTorch's
initialisation, full-batch Adam (``lr`` 1e-2, :data:`STEPS` steps). Every network is scored on the
test samples clean and under PGD of 50 steps (stronger than the training attack), and the
table gives the median over the seeds (each seed's value after it). A convex program that
Clarabel fails on is counted in the column ``failed`` and left out of the medians. Writes
``results/bench_robust.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_families import _f, text  # noqa: E402
from common import write  # noqa: E402

from ocnet.convex import ConvexProgram, TwoLayerReLU, recover, sample_patterns  # noqa: E402
from ocnet.convex.adversarial import attacked_accuracy, fgsm, pgd, train  # noqa: E402
from ocnet.convex.robust import solve_robust_cvxpy, with_linear_pattern  # noqa: E402
from ocnet.model.data import load  # noqa: E402

#: Task ↦ data set, its two classes (+1 first), training samples kept, sampled patterns, β and radii.
#: ε is in standardised units: on ``peaks`` the median ℓ∞ distance from a class-1 sample to the
#: nearest class-3 sample is 0.53 there (seed 0), so ε = 0.2 leaves most samples room; on
#: ``digits`` the radii go up to where PGD costs the nominal network about a third of the digits.
TASKS: dict[str, dict[str, Any]] = {
    "peaks": {"data": "peaks", "classes": (1, 3), "n": 300, "patterns": 40, "beta": 1.0, "radii": (0.05, 0.1, 0.2)},
    "digits": {"data": "digits", "classes": (3, 8), "n": 300, "patterns": 30, "beta": 1.0, "radii": (0.1, 0.25, 0.5),
               "pca": 10},
}
METHODS = ("convex-robust", "fgsm-train", "pgd-train", "convex-nominal")
STEPS = 500  # Adam steps of the gradient-trained networks
EVAL_STEPS = 50  # PGD steps of the attack that scores every network


def binary(task: dict[str, Any], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training and test inputs ``(n, d)`` and labels ±1 of the task's two classes, float64."""
    ds = load(task["data"], seed=seed)
    a, b = task["classes"]

    def pick(x: torch.Tensor, y: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (y == a) | (y == b)
        x, y = x[keep].reshape(int(keep.sum()), -1).double()[:n], y[keep][:n]
        return x, torch.where(y == a, 1.0, -1.0).double()

    x, y, x_test, y_test = (*pick(ds.x_train, ds.y_train, task["n"]), *pick(ds.x_test, ds.y_test, None))
    if task.get("pca"):
        mean = x.mean(dim=0)
        components = torch.linalg.svd(x - mean, full_matrices=False)[2][:task["pca"]].T
        scale = ((x - mean) @ components).std()
        x, x_test = (((a - mean) @ components) / scale for a in (x, x_test))
    return x, y, x_test, y_test


def strong_pgd(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               loss: str = "logistic") -> torch.Tensor:
    return pgd(net, x, y, eps, loss=loss, steps=EVAL_STEPS)


def score(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> dict[str, float]:
    return {"clean": attacked_accuracy(net, x, y, 0.0),
            "attacked": attacked_accuracy(net, x, y, eps, attack=strong_pgd)}


def width(solution: Any) -> int:
    """Neurons of a convex solution, not counting those below 10⁻⁶ of the largest (solver residue)."""
    norms = torch.cat([solution.v, solution.w]).norm(dim=1)
    return int((norms > 1e-6 * float(norms.max())).sum()) if float(norms.max()) > 0 else 0


def run_seed(name: str, task: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """Every method at every radius of ``task`` for one seed."""
    x, y, x_test, y_test = binary(task, seed)
    full = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    patterns = with_linear_pattern(sample_patterns(full, task["patterns"], torch.Generator().manual_seed(seed)))
    program = ConvexProgram.build(x, y, beta=task["beta"], loss="logistic", patterns=patterns)
    hidden = 2 * patterns.shape[1]
    convex: dict[float, tuple[torch.nn.Module, float, dict[str, Any]] | str] = {}
    for eps in (0.0, *task["radii"]):
        start = time.perf_counter()
        try:
            solution = solve_robust_cvxpy(program, eps)
        except RuntimeError as e:  # Clarabel's failures are results too: counted, not hidden
            convex[eps] = str(e).splitlines()[0]
            continue
        convex[eps] = (recover(program, solution), time.perf_counter() - start,
                       {"neurons": width(solution), "objective": solution.objective.total})
    rows = []
    for eps in task["radii"]:
        print(f"{name} seed {seed} ε = {eps:g}", flush=True)
        nets = {"convex-robust": convex[eps], "convex-nominal": convex[0.0]}
        for method, attack in (("fgsm-train", fgsm), ("pgd-train", pgd)):
            torch.manual_seed(seed)
            net = TwoLayerReLU(x.shape[1], hidden).double()
            start = time.perf_counter()
            history = train(net, x, y, eps=eps, attack=attack, loss="logistic", beta=task["beta"], steps=STEPS)
            nets[method] = (net, time.perf_counter() - start, {"neurons": hidden, "objective": history[-1]})
        for method in METHODS:
            row = {"task": name, "eps": eps, "method": method, "seed": seed, "n_train": len(x), "n_test": len(x_test),
                   "d": x.shape[1], "patterns": patterns.shape[1]}
            got = nets[method]
            if isinstance(got, str):
                rows.append({**row, "error": got})
                continue
            net, seconds, extra = got
            rows.append({**row, "train_s": seconds, **score(net, x_test, y_test, eps), **extra})
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["eps"], r["method"]), []).append(r)
    med: Callable[[list[dict[str, Any]], str], float] = lambda rs, k: statistics.median(r[k] for r in rs)
    out = []
    for (t, e, m), group in groups.items():
        rs = [r for r in group if "error" not in r]
        out.append({"task": t, "eps": e, "method": m, "seeds": [r["seed"] for r in rs],
                    **{k: med(rs, k) if rs else None for k in ("clean", "attacked", "train_s", "neurons")},
                    "per_seed": {k: [r[k] for r in rs] for k in ("clean", "attacked")},
                    "failed": [f"seed {r['seed']}: {r['error']}" for r in group if "error" in r]})
    return out


def cells(s: dict[str, Any]) -> list[str]:
    seeds = lambda k: "/".join(f"{100 * a:.1f}" for a in s["per_seed"][k])  # noqa: E731
    return [s["task"], f"{s['eps']:g}", s["method"], f"{_f(s['clean'], '.1f', 100)} ({seeds('clean')})",
            f"{_f(s['attacked'], '.1f', 100)} ({seeds('attacked')})", _f(s["neurons"], "g"), _f(s["train_s"], ".2g"),
            str(len(s["failed"]))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"of {', '.join(TASKS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        sys.exit(f"unknown task: {', '.join(unknown)} (tasks: {', '.join(TASKS)})")
    torch.set_num_threads(1)
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for name in tasks for seed in seeds for r in run_seed(name, TASKS[name], seed)]
    summary = summarise(rows)
    head = ["task", "eps", "method", "clean test acc % (seeds)", f"PGD-{EVAL_STEPS} test acc % (seeds)", "neurons",
            "train s", "failed"]
    print(text([cells(s) for s in summary], head))
    wall = time.perf_counter() - start
    print(f"wall time {wall:.0f} s")
    write("bench_robust", {"tasks": {t: TASKS[t] for t in tasks}, "steps": STEPS, "eval_pgd_steps": EVAL_STEPS,
                           "wall_s": wall, "summary": summary, "runs": rows}, args.out)


if __name__ == "__main__":
    main()
