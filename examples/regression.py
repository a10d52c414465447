"""Regression with LFP: an MLP on scikit-learn's diabetes data, next to SGD from the same start.

Both models begin from the same weights and see the same batches. ``LFPOptimizer`` ascends the
feedback of ``SquaredErrorReward`` (reward ``y * (t - y)``: the backward pass starts from the error
``t - y``) under the ``regression`` preset; ``torch.optim.SGD`` descends the mean squared error.
Features and target are standardised on the training split, so predicting the training mean
scores a test MSE of about 0.84 on this split. The script prints the test MSE of both after every
epoch.

    python examples/regression.py                # 60 epochs
    python examples/regression.py --epochs 20
    python examples/regression.py --smoke        # 2 epochs: checks that everything runs
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from torch import nn

from lfpoptim import LFPOptimizer, SquaredErrorReward

BATCH_SIZE = 32
LEARNING_RATE = 0.003
MOMENTUM = 0.9


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train/test features and targets, standardised with the training split's statistics."""
    features, target = load_diabetes(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(features, target, test_size=0.2, random_state=0)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    target_mean, target_std = train_y.mean(), train_y.std()

    def tensor(array: object) -> torch.Tensor:
        return torch.tensor(array, dtype=torch.float32)

    return (
        tensor((train_x - mean) / std),
        tensor((train_y - target_mean) / target_std),
        tensor((test_x - mean) / std),
        tensor((test_y - target_mean) / target_std),
    )


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def test_mse(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.mse_loss(model(inputs).squeeze(1), targets))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="2 epochs, to check that everything runs")
    args = parser.parse_args()
    epochs = 2 if args.smoke else args.epochs

    train_x, train_y, test_x, test_y = load_data()
    torch.manual_seed(args.seed)
    lfp_model = mlp()
    sgd_model = copy.deepcopy(lfp_model)
    lfp = LFPOptimizer(lfp_model, SquaredErrorReward(), preset="regression", lr=LEARNING_RATE, momentum=MOMENTUM)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    mean_mse = float(F.mse_loss(torch.zeros_like(test_y), test_y))
    print(f"test MSE of predicting the training mean: {mean_mse:.3f}")
    print("epoch  LFP test MSE  SGD test MSE")
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            chosen = order[start : start + BATCH_SIZE]
            inputs, targets = train_x[chosen], train_y[chosen]
            lfp.step(inputs, targets)
            sgd.zero_grad()
            F.mse_loss(sgd_model(inputs).squeeze(1), targets).backward()
            sgd.step()
        print(f"{epoch:5d}  {test_mse(lfp_model, test_x, test_y):12.3f}  {test_mse(sgd_model, test_x, test_y):12.3f}")


if __name__ == "__main__":
    main()
