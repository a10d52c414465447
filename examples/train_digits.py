"""Train an MLP on scikit-learn's digits with LFP, next to plain SGD from the same start.

Both models begin from the same weights and see the same batches in the same order; the only
difference is the update: ``LFPOptimizer`` ascends LFP feedback, ``torch.optim.SGD`` descends the
cross-entropy gradient. The script prints both test accuracies after every epoch, the mean final
accuracy over seeds, and plots the test-accuracy curves.

    python examples/train_digits.py                 # 3 seeds x 30 epochs, plot in outputs/digits.png
    python examples/train_digits.py --seeds 1 --epochs 10
    python examples/train_digits.py --smoke         # 1 seed, 1 epoch: checks that everything runs
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write PNG files, never open a window

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from _digits import Digits, accuracy, load_digits_split, make_mlp  # examples/_digits.py, next to this file
from tqdm import tqdm

from lfpoptim import LFPOptimizer, SoftmaxLossReward

BATCH_SIZE = 128
LEARNING_RATE = 0.1
MOMENTUM = 0.9


@dataclass
class Curves:
    """Test accuracy after every epoch, for one seed."""

    lfp: list[float] = field(default_factory=list)
    sgd: list[float] = field(default_factory=list)


def train_one_seed(data: Digits, seed: int, epochs: int, progress: tqdm) -> Curves:
    torch.manual_seed(seed)
    lfp_model = make_mlp()
    sgd_model = copy.deepcopy(lfp_model)  # the same initial weights

    # The whole LFP change: an optimizer that takes the batch and a reward instead of a loss's gradient.
    lfp_optimizer = LFPOptimizer(
        lfp_model, SoftmaxLossReward(), base=torch.optim.SGD, lr=LEARNING_RATE, momentum=MOMENTUM
    )
    sgd_optimizer = torch.optim.SGD(sgd_model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    batch_order = torch.Generator().manual_seed(seed)
    curves = Curves()
    for epoch in range(1, epochs + 1):
        permutation = torch.randperm(len(data.train_targets), generator=batch_order)
        for batch in permutation.split(BATCH_SIZE):
            inputs, targets = data.train_inputs[batch], data.train_targets[batch]

            lfp_optimizer.step(inputs, targets)

            sgd_optimizer.zero_grad()
            F.cross_entropy(sgd_model(inputs), targets).backward()
            sgd_optimizer.step()

        curves.lfp.append(accuracy(lfp_model, data.test_inputs, data.test_targets))
        curves.sgd.append(accuracy(sgd_model, data.test_inputs, data.test_targets))
        progress.update()
        progress.write(
            f"seed {seed}  epoch {epoch:3d}  test accuracy  LFP {curves.lfp[-1]:.4f}  SGD {curves.sgd[-1]:.4f}"
        )
    return curves


def plot(curves_per_seed: list[Curves], path: Path) -> None:
    """Mean test accuracy per epoch over seeds, with the range over seeds shaded."""
    epochs = np.arange(1, len(curves_per_seed[0].lfp) + 1)
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, color in (("lfp", "tab:blue"), ("sgd", "tab:orange")):
        runs = np.array([getattr(curves, name) for curves in curves_per_seed])
        axes.plot(epochs, runs.mean(axis=0), color=color, marker=".", label=name.upper())
        axes.fill_between(epochs, runs.min(axis=0), runs.max(axis=0), color=color, alpha=0.2)
    axes.set_xlabel("epoch")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"Digits, MLP 64-256-256-10 ({len(curves_per_seed)} seeds)")
    axes.grid(alpha=0.3)
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="epochs per seed (default: 30)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default: 3)")
    parser.add_argument("--plot", type=Path, default=Path("outputs/digits.png"), help="where to save the PNG")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 1 epoch: a quick check that it runs")
    args = parser.parse_args()
    epochs, seeds = (1, 1) if args.smoke else (args.epochs, args.seeds)

    data = load_digits_split()
    curves_per_seed = []
    with tqdm(total=epochs * seeds, desc="training", unit="epoch") as progress:
        for seed in range(seeds):
            curves_per_seed.append(train_one_seed(data, seed, epochs, progress))

    for seed, curves in enumerate(curves_per_seed):
        print(f"seed {seed}: final test accuracy  LFP {curves.lfp[-1]:.4f}  SGD {curves.sgd[-1]:.4f}")
    lfp_mean = np.mean([curves.lfp[-1] for curves in curves_per_seed])
    sgd_mean = np.mean([curves.sgd[-1] for curves in curves_per_seed])
    print(f"mean final test accuracy over {seeds} seed(s)  LFP {lfp_mean:.4f}  SGD {sgd_mean:.4f}")

    plot(curves_per_seed, args.plot)
    print(f"plot saved to {args.plot}")


if __name__ == "__main__":
    main()
