"""scikit-learn's digits and the two small models that the digits examples train.

The examples import this file by name (``from _digits import ...``): Python finds it because it
sits next to them (``python examples/train_digits.py`` puts ``examples/`` on the path). Every
example splits the data the same way, so their accuracies can be compared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from lfpoptim import LFPOptimizer

BATCH_SIZE = 128


class Digits(NamedTuple):
    """A fixed, stratified 80/20 split of the 1797 digits; inputs in [-1, 1].

    A tuple, so ``train_x, train_y, test_x, test_y = load_digits_split()`` works too.
    """

    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    test_inputs: torch.Tensor
    test_targets: torch.Tensor


def load_digits_split(image_shape: tuple[int, ...] = (64,)) -> Digits:
    """The 8x8 digits, each image shaped ``image_shape``: ``(64,)`` for an MLP, ``(1, 8, 8)`` for a CNN."""
    images, labels = load_digits(return_X_y=True)
    inputs = ((images / 16.0 - 0.5) / 0.5).reshape(-1, *image_shape)
    train_x, test_x, train_y, test_y = train_test_split(inputs, labels, test_size=0.2, random_state=0, stratify=labels)
    return Digits(
        torch.tensor(train_x, dtype=torch.float32),
        torch.tensor(train_y),
        torch.tensor(test_x, dtype=torch.float32),
        torch.tensor(test_y),
    )


def load_digit_images(image_size: int = 32) -> Digits:
    """The same split as 3-channel images of ``image_size`` pixels (bilinear upsampling), for timm models."""
    data = load_digits_split(image_shape=(1, 8, 8))

    def upsample(images: torch.Tensor) -> torch.Tensor:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        return images.expand(-1, 3, -1, -1).contiguous()

    return Digits(upsample(data.train_inputs), data.train_targets, upsample(data.test_inputs), data.test_targets)


def train_epoch(
    optimizer: LFPOptimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_order: torch.Generator,
    max_batches: int | None = None,
) -> None:
    """One LFP step per shuffled batch of ``BATCH_SIZE`` samples; ``batch_order`` draws the shuffle.

    ``max_batches`` stops the epoch early (the examples' ``--smoke`` runs).
    """
    for batch in torch.randperm(len(targets), generator=batch_order).split(BATCH_SIZE)[:max_batches]:
        optimizer.step(inputs[batch], targets[batch])


@torch.no_grad()
def accuracy(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """The fraction of ``inputs`` whose predicted class is the target.

    ``predict`` maps the model's outputs to class indices; by default the highest output is the class.
    """
    outputs = model(inputs)
    predictions = outputs.argmax(dim=1) if predict is None else predict(outputs)
    return (predictions == targets).float().mean().item()


def make_mlp() -> nn.Sequential:
    """The MLP 64-256-256-10 with ReLUs, for flat inputs."""
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def make_lenet_bn() -> nn.Sequential:
    """A LeNet-style CNN for 1x8x8 inputs with BatchNorm and dropout.

    conv3x3(1->16)-BN-ReLU-maxpool-conv3x3(16->32)-BN-ReLU-maxpool-flatten-dropout(0.2)-fc(128->64)-ReLU-fc(64->10).
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(32 * 2 * 2, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def make_lenet() -> nn.Sequential:
    """A LeNet for 1x8x8 inputs.

    conv3x3(1->16)-ReLU-maxpool-conv3x3(16->32)-ReLU-maxpool-flatten-fc(128->64)-ReLU-fc(64->10).
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
