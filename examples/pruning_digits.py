"""Do LFP-trained networks survive pruning better than gradient-trained ones? Measured on digits.

A small LeNet-style CNN is trained on scikit-learn's digits (8x8 images) twice from the same
initial weights and the same batches: once with ``LFPOptimizer`` (SoftmaxLossReward) and once with
``torch.optim.SGD`` on the cross-entropy, both with lr 0.1, momentum 0.9 and the same cosine
learning-rate schedule. Each trained model is then pruned globally, one shot and without
fine-tuning, to 0-95% of its weights, once by weight magnitude and once by relevance (the
accumulated |LFP feedback| over the training set), and its test accuracy is measured. The script
prints a table of the mean accuracy over seeds, the update sparsity and weight Gini index of both
optimizers, and plots accuracy against fraction pruned.

    python examples/pruning_digits.py                      # 3 seeds x 30 epochs, plot in outputs/pruning_digits.png
    python examples/pruning_digits.py --seeds 5 --epochs 50
    python examples/pruning_digits.py --smoke              # 1 seed, 1 epoch, 3 fractions: checks that everything runs
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write PNG files, never open a window

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from _digits import Digits, accuracy, load_digits_split, make_lenet  # examples/_digits.py, next to this file
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward
from lfpoptim.analysis import SparsityTracker, sparsity, weight_gini
from lfpoptim.prune import (
    DEFAULT_FRACTIONS,
    PruningCurve,
    feedback_scores,
    plot_pruning_curves,
    prunable_weights,
    pruning_curve,
)

BATCH_SIZE = 128
LEARNING_RATE = 0.1
MOMENTUM = 0.9
SMOKE_FRACTIONS = (0.0, 0.5, 0.9)
OPTIMIZERS = ("LFP", "SGD")
CRITERIA = ("magnitude", "relevance")


@dataclass
class Run:
    """One trained model of one seed, and what was measured on it."""

    accuracy: float
    zero_feedback: float
    curves: dict[str, PruningCurve]
    update_sparsity: dict[str, float]
    weight_gini: dict[str, float]


def train_pair(data: Digits, seed: int, epochs: int) -> tuple[dict[str, nn.Module], dict[str, SparsityTracker]]:
    """Train the LeNet with LFP and with SGD from the same start on the same batches."""
    torch.manual_seed(seed)
    lfp_model = make_lenet()
    sgd_model = copy.deepcopy(lfp_model)
    lfp_optimizer = LFPOptimizer(lfp_model, SoftmaxLossReward(), lr=LEARNING_RATE, momentum=MOMENTUM)
    sgd_optimizer = torch.optim.SGD(sgd_model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    schedulers = [
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) for opt in (lfp_optimizer, sgd_optimizer)
    ]
    # .grad after each step: minus the feedback for LFP, the gradient for SGD.
    trackers = {"LFP": SparsityTracker(lfp_model), "SGD": SparsityTracker(sgd_model)}

    batch_order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(data.train_targets), generator=batch_order).split(BATCH_SIZE):
            inputs, targets = data.train_inputs[batch], data.train_targets[batch]

            lfp_optimizer.step(inputs, targets)
            trackers["LFP"].update()

            sgd_optimizer.zero_grad()
            F.cross_entropy(sgd_model(inputs), targets).backward()
            sgd_optimizer.step()
            trackers["SGD"].update()
        for scheduler in schedulers:
            scheduler.step()
    return {"LFP": lfp_model.eval(), "SGD": sgd_model.eval()}, trackers


def measure(model: nn.Module, tracker: SparsityTracker, data: Digits, fractions: tuple[float, ...]) -> Run:
    def test_accuracy(pruned: nn.Module) -> float:
        return accuracy(pruned, data.test_inputs, data.test_targets)

    training_batches = list(zip(data.train_inputs.split(BATCH_SIZE), data.train_targets.split(BATCH_SIZE), strict=True))
    scores = feedback_scores(model, training_batches, SoftmaxLossReward())
    weight_scores = torch.cat([scores[name].flatten() for name in prunable_weights(model)])
    return Run(
        accuracy=test_accuracy(model),
        zero_feedback=sparsity(weight_scores),
        curves={
            "magnitude": pruning_curve(model, test_accuracy, fractions),
            "relevance": pruning_curve(model, test_accuracy, fractions, scores=scores),
        },
        update_sparsity=tracker.mean_update_sparsity(),
        weight_gini=weight_gini(model),
    )


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def print_tables(runs: dict[str, list[Run]], fractions: tuple[float, ...]) -> None:
    seeds = len(runs["LFP"])
    columns = [(optimizer, criterion) for criterion in CRITERIA for optimizer in OPTIMIZERS]
    print(f"\nTest accuracy after global one-shot pruning, mean ± std over {seeds} seed(s)\n")
    print("| pruned | " + " | ".join(f"{optimizer} {criterion}" for optimizer, criterion in columns) + " |")
    print("|---:|" + "---:|" * len(columns))
    for index, fraction in enumerate(fractions):
        cells = [
            mean_std([run.curves[criterion].values[index] for run in runs[optimizer]])
            for optimizer, criterion in columns
        ]
        print(f"| {100 * fraction:.0f}% | " + " | ".join(cells) + " |")

    layers = list(runs["LFP"][0].weight_gini)
    print(
        "\nUpdate sparsity (fraction of exact zeros in .grad, mean over steps) "
        f"and final weight Gini index, mean over {seeds} seed(s)\n"
    )
    print("| parameter | LFP update sparsity | SGD update sparsity | LFP weight Gini | SGD weight Gini |")
    print("|---|---:|---:|---:|---:|")
    for layer in layers:
        cells = [np.mean([run.update_sparsity[layer] for run in runs[optimizer]]) for optimizer in OPTIMIZERS]
        cells += [np.mean([run.weight_gini[layer] for run in runs[optimizer]]) for optimizer in OPTIMIZERS]
        print(f"| {layer} | " + " | ".join(f"{cell:.3f}" for cell in cells) + " |")


def plot(runs: dict[str, list[Run]], path: Path) -> None:
    """Accuracy against fraction pruned, LFP next to SGD, one panel per pruning criterion."""
    figure, axes = plt.subplots(1, len(CRITERIA), figsize=(11, 4), sharey=True)
    for ax, criterion in zip(axes, CRITERIA, strict=True):
        plot_pruning_curves(
            {optimizer: [run.curves[criterion] for run in runs[optimizer]] for optimizer in OPTIMIZERS}, ax=ax
        )
        ax.set_title(f"global {criterion} pruning")
    figure.suptitle(f"Digits LeNet, one-shot pruning without fine-tuning ({len(runs['LFP'])} seeds, mean and range)")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="epochs per seed (default: 30)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default: 3)")
    parser.add_argument("--plot", type=Path, default=Path("outputs/pruning_digits.png"), help="where to save the PNG")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 1 epoch, 3 fractions: a quick check that it runs")
    args = parser.parse_args()
    epochs, seeds = (1, 1) if args.smoke else (args.epochs, args.seeds)
    fractions = SMOKE_FRACTIONS if args.smoke else DEFAULT_FRACTIONS

    # The model is tiny: threads would only wait for each other, and one thread keeps runs reproducible.
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load_digits_split(image_shape=(1, 8, 8))
    runs: dict[str, list[Run]] = {optimizer: [] for optimizer in OPTIMIZERS}
    for seed in range(seeds):
        models, trackers = train_pair(data, seed, epochs)
        for optimizer in OPTIMIZERS:
            runs[optimizer].append(measure(models[optimizer], trackers[optimizer], data, fractions))
        print(
            f"seed {seed}: test accuracy after {epochs} epoch(s)  "
            + "  ".join(f"{optimizer} {runs[optimizer][-1].accuracy:.4f}" for optimizer in OPTIMIZERS)
            + "  |  weights with zero accumulated feedback  "
            + "  ".join(f"{optimizer} {runs[optimizer][-1].zero_feedback:.3f}" for optimizer in OPTIMIZERS),
            flush=True,
        )

    print_tables(runs, fractions)
    plot(runs, args.plot)
    print(f"\nplot saved to {args.plot}; total time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
