"""An ordinary PyTorch training loop that trains with LFP: only the optimizer line differs.

    python examples/dropin_loop.py            # LFP (drop-in) and SGD, side by side
    python examples/dropin_loop.py --smoke    # a few steps, for CI

The loop below is written for SGD in the shape of PyTorch's MNIST example (zero_grad, forward,
loss, backward, step, scheduler). Swapping the optimizer line is the whole change:

    -    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    +    optimizer = lfpoptim.DropInLFPOptimizer(model, lr=0.1, momentum=0.9)
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _digits import accuracy, load_digits_split, make_mlp  # examples/_digits.py, next to this file
from torch import nn

import lfpoptim


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make_mlp()


def train(model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int, steps: int | None) -> list[float]:
    """The unchanged SGD loop: nothing here knows about LFP."""
    train_x, train_y, test_x, test_y = load_digits_split()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
    generator = torch.Generator().manual_seed(0)
    accuracies = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)[: steps and steps * 128]
        for start in range(0, len(order), 128):
            index = order[start : start + 128]
            optimizer.zero_grad()
            output = model(train_x[index])
            loss = F.cross_entropy(output, train_y[index])
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        accuracies.append(accuracy(model, test_x, test_y))
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="one epoch of eight steps")
    args = parser.parse_args()
    epochs, steps = (1, 8) if args.smoke else (args.epochs, None)

    model = make_model(seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sgd = train(model, optimizer, epochs, steps)

    model = make_model(seed=0)
    optimizer = lfpoptim.DropInLFPOptimizer(model, lr=0.1, momentum=0.9)
    lfp = train(model, optimizer, epochs, steps)
    optimizer.close()

    print("epoch  SGD     LFP (drop-in)")
    for epoch, (a, b) in enumerate(zip(sgd, lfp, strict=True), start=1):
        print(f"{epoch:5d}  {a:.4f}  {b:.4f}")


if __name__ == "__main__":
    main()
