"""The training loop of the reference implementation (``lfprop``), written with lfpoptim.

The reference's minimal example trains a LeNet with SGD (lr 0.1, momentum 0.9, batch 128),
feedback summed over the batch and the update's norm clipped to 3. ``reference_settings`` below
is that loop in lfpoptim: the same feedback, the same clipping, one call per step. The script
trains a small LeNet on scikit-learn's digits with it and, from the same start on the same
batches, with lfpoptim's defaults (each tensor's update as long as SGD's step, no clipping) and
with the defaults plus clipping to norm 1, and prints the test accuracy after every epoch.

    python examples/lfprop_migration.py             # 10 epochs each
    python examples/lfprop_migration.py --smoke     # 1 epoch each: checks that everything runs
"""

from __future__ import annotations

import argparse
import copy

import torch
from _digits import accuracy, load_digits_split, make_lenet  # examples/_digits.py, next to this file
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward

BATCH_SIZE = 128


# --8<-- [start:reference-settings]
def reference_settings(model: nn.Module) -> LFPOptimizer:
    """The reference's minimal example: summed feedback, update norm clipped to 3, SGD lr 0.1 momentum 0.9."""
    return LFPOptimizer(
        model, SoftmaxLossReward(), base=torch.optim.SGD, lr=0.1, momentum=0.9, feedback_reduction="sum", clip_norm=3.0
    )


# --8<-- [end:reference-settings]


def default_settings(model: nn.Module) -> LFPOptimizer:
    """lfpoptim's defaults: feedback averaged over the batch, each tensor's update at SGD's length, no clipping."""
    return LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9)


def clipped_default_settings(model: nn.Module) -> LFPOptimizer:
    """lfpoptim's defaults with the update's norm clipped to 1."""
    return LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9, clip_norm=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (default: 10)")
    parser.add_argument("--smoke", action="store_true", help="1 epoch per run: a quick check that it runs")
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs
    torch.set_num_threads(1)
    train_x, train_y, test_x, test_y = load_digits_split(image_shape=(1, 8, 8))

    torch.manual_seed(0)
    start = make_lenet()
    print("test accuracy per epoch")
    runs = {
        "reference settings": reference_settings,
        "lfpoptim defaults": default_settings,
        "defaults, clip 1": clipped_default_settings,
    }
    for name, settings in runs.items():
        model = copy.deepcopy(start)
        optimizer = settings(model)
        batch_order = torch.Generator().manual_seed(0)
        accuracies = []
        for _ in range(epochs):
            # --8<-- [start:loop]
            for batch in torch.randperm(len(train_y), generator=batch_order).split(BATCH_SIZE):
                optimizer.step(train_x[batch], train_y[batch])  # forward, reward, LFP, -feedback -> .grad, SGD step
            # --8<-- [end:loop]
            accuracies.append(accuracy(model, test_x, test_y))
        print(f"{name:>18}: " + " ".join(f"{accuracy:.3f}" for accuracy in accuracies))


if __name__ == "__main__":
    main()
