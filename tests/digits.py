"""scikit-learn's bundled digits as tensors, split once, for the tests that train."""

from __future__ import annotations

from functools import cache

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


@cache
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train inputs, train labels, test inputs, test labels); inputs scaled to [-1, 1], shape (n, 64)."""
    features, labels = load_digits(return_X_y=True)
    features = (features / 16.0 - 0.5) / 0.5
    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=0.2, random_state=0, stratify=labels
    )
    return (
        torch.tensor(train_x, dtype=torch.float32),
        torch.tensor(train_y),
        torch.tensor(test_x, dtype=torch.float32),
        torch.tensor(test_y),
    )


def accuracy(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(inputs).argmax(dim=1) == labels).float().mean())


def conv_stem() -> list[nn.Module]:
    """conv3x3(1->4)-BatchNorm-ReLU(inplace)-maxpool-flatten: 1x8x8 images to 64 features, for small test CNNs."""
    return [nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten()]
