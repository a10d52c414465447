"""The first training loop of the documentation: an MLP on scikit-learn's digits with ``LFPOptimizer``.

Trains the MLP with ReLU, prints the reward and the training accuracy after every epoch and the
shapes of the feedback, then trains the same MLP with Heaviside steps in place of ReLU (zero
gradient everywhere, so gradient descent could not train it).

    python examples/quickstart.py             # 10 epochs each
    python examples/quickstart.py --smoke     # 1 epoch each: checks that everything runs
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

from lfpoptim import Heaviside, LFPOptimizer, SoftmaxLossReward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per model (default: 10)")
    parser.add_argument("--smoke", action="store_true", help="1 epoch per model: a quick check that it runs")
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs
    torch.manual_seed(0)

    # --8<-- [start:loop]
    images, labels = load_digits(return_X_y=True)
    inputs = torch.tensor((images / 16.0 - 0.5) / 0.5, dtype=torch.float32)  # 8x8 images, 64 features in [-1, 1]
    targets = torch.tensor(labels)

    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9)

    for epoch in range(epochs):
        for batch in torch.randperm(len(targets)).split(128):
            result = optimizer.step(inputs[batch], targets[batch])
        with torch.no_grad():
            accuracy = (model(inputs).argmax(dim=1) == targets).float().mean()
        print(f"epoch {epoch}: mean reward {result.mean_reward:.4f}, accuracy {accuracy:.3f}")
    # --8<-- [end:loop]

    # --8<-- [start:feedback]
    feedback = optimizer.feedback(inputs[:32], targets[:32])
    print({name: tuple(value.shape) for name, value in feedback.items()})
    # --8<-- [end:feedback]

    # --8<-- [start:heaviside]
    model = nn.Sequential(nn.Linear(64, 256), Heaviside(), nn.Linear(256, 10))
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9)
    # --8<-- [end:heaviside]
    for _ in range(epochs):
        for batch in torch.randperm(len(targets)).split(128):
            optimizer.step(inputs[batch], targets[batch])
    with torch.no_grad():
        accuracy = (model(inputs).argmax(dim=1) == targets).float().mean()
    print(f"Heaviside MLP after {epochs} epoch(s): training accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
