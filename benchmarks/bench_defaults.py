"""What each network kind learns with ocnet's defaults, beside a plain PyTorch model of its
kind and of similar size, trained the same way.

    python benchmarks/bench_defaults.py [--epochs 20] [--seeds 0,1,2] [--report 6] [--out FILE.json]

For each kind, ``python -m ocnet.run --problem P [--net K]`` with nothing else set (the
serial solver on one process, one thread) against the plain model below, trained with the
same data (normalised alike), optimiser (Adam, ocnet's default learning rate), batch size,
seeds and epochs; both are scored on the test set after every epoch.

``dense``        digits (the default problem):  an MLP 64-128-64-10 (ReLU)
``conv``         digits, ``--net conv``:         a CNN conv3×3(32)-pool-conv3×3(64)-pool-linear
``conv1d``       mnist1d:                        MNIST-1D's own CNN (Greydanus & Kobak 2020:
                                                 three strided convolutions of 25 channels, linear)
``transformer``  sequences:                      ``nn.TransformerEncoder`` of the same width,
                                                 heads and layer count, pre-norm, class token

Prints, per kind, the median (and the range) over the seeds of the test accuracy after
``--report`` epochs and after the last one, with the parameter counts.
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

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import ocnet  # noqa: E402
from ocnet.model import data as datasets  # noqa: E402
from ocnet.runs.config import COMMON as OPTIONS  # noqa: E402

KINDS = {"dense": ("digits", []), "conv": ("digits", ["--net", "conv"]), "conv1d": ("mnist1d", []),
         "transformer": ("sequences", [])}


def plain_model(kind: str, d: datasets.Dataset) -> nn.Module:
    """The plain PyTorch model of ``kind`` for the data set ``d``."""
    if kind == "dense":
        return nn.Sequential(nn.Flatten(), nn.Linear(d.x_train[0].numel(), 128), nn.ReLU(), nn.Linear(128, 64),
                             nn.ReLU(), nn.Linear(64, d.n_classes))
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(d.input_shape[0], 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(64 * (d.input_shape[1] // 4) * (d.input_shape[2] // 4), d.n_classes))
    if kind == "conv1d":  # the MNIST-1D authors' CNN: 40 -> 20 -> 10 -> 5 points
        return nn.Sequential(nn.Conv1d(d.input_shape[0], 25, 5, stride=2, padding=2), nn.ReLU(),
                             nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(25 * 5, d.n_classes))
    return PlainTransformer(datasets.vocabulary(d.name), d.input_shape[0], d.n_classes)


class PlainTransformer(nn.Module):
    """Token ids ``(batch, L)`` → logits: embeddings with learnt positions and a class token,
    a pre-norm ``nn.TransformerEncoder`` of ocnet's default size, a linear head on the class
    token."""

    def __init__(self, vocab: int, length: int, n_classes: int) -> None:
        super().__init__()
        width, heads, layers = OPTIONS["width"].default, OPTIONS["heads"].default, OPTIONS["layers"].default
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(1, length + 1, width))
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(x.long())], dim=1) + self.position
        return self.head(self.encoder(u)[:, 0])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train_plain(kind: str, problem: str, seed: int, epochs: int) -> tuple[list[float], int]:
    """Test accuracy after each epoch of the plain model, and its parameter count."""
    d = datasets.load(problem, seed=seed)
    torch.manual_seed(seed)
    model = plain_model(kind, d)
    opt = torch.optim.Adam(model.parameters(), lr=OPTIONS["lr"].default)
    batch, loss_fn = OPTIONS["batch_size"].default, nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(d.y_train), generator=order).split(batch):
            opt.zero_grad()
            loss_fn(model(d.x_train[idx]), d.y_train[idx]).backward()
            opt.step()
        curve.append(accuracy(model, d.x_test, d.y_test))
    return curve, sum(p.numel() for p in model.parameters())


def train_ocnet(problem: str, flags: list[str], seed: int, epochs: int, out: Path) -> tuple[list[float], int]:
    """Test accuracy after each epoch of ocnet's default network, and its parameter count."""
    cmd = [sys.executable, "-m", "ocnet.run", "--problem", problem, *flags, "--epochs", str(epochs),
           "--seed", str(seed), "--threads", "1", "--quiet", "--plots", "false", "--timeline-steps", "0",
           "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    curve = [r["test_acc"] for r in history if "test_acc" in r]
    return curve, sum(p.numel() for p in ocnet.load_run(out).model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=OPTIONS["epochs"].default)
    parser.add_argument("--report", type=int, default=6, help="also report the accuracy after this many epochs")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    print(f"{'kind':<12} {'problem':<10} {'model':<7} {'params':>7}  "
          f"{f'test % after {args.report}':>18}  {f'test % after {args.epochs}':>18}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            problem, flags = KINDS[kind]
            for model in ("ocnet", "plain"):
                runs = [train_ocnet(problem, flags, s, args.epochs, Path(tmp) / f"{kind}-{s}") if model == "ocnet"
                        else train_plain(kind, problem, s, args.epochs) for s in seeds]
                curves, params = [c for c, _ in runs], runs[0][1]
                row = {"problem": problem, "params": params, "curves": curves}
                for at in (args.report, args.epochs):
                    accs = [100 * c[at - 1] for c in curves]
                    row[f"after_{at}"] = {"median": statistics.median(accs), "min": min(accs), "max": max(accs)}
                results[f"{kind}/{model}"] = row
                cells = [f"{row[f'after_{at}']['median']:6.2f} ({row[f'after_{at}']['min']:.1f}–"
                         f"{row[f'after_{at}']['max']:.1f})" for at in (args.report, args.epochs)]
                print(f"{kind:<12} {problem:<10} {model:<7} {params:>7}  {cells[0]:>18}  {cells[1]:>18}", flush=True)
    write("bench_defaults", {"epochs": args.epochs, "report": args.report, "seeds": seeds, "results": results},
          args.out)


if __name__ == "__main__":
    main()
