"""Train one model twice, from the same start on the same batches: SGD on cross-entropy, and LFP.

The shared core of ``lr_sweep.py`` and ``from_scratch.py``. Both methods get a copy of the same
freshly initialised model, the same base optimizer settings (SGD with momentum), the same cosine
learning-rate schedule (per step, to zero), the same shuffled batches (one ``torch.Generator``
per seed) and the same dropout masks (the global seed is reset before each run). LFP is
``LFPOptimizer(model, SoftmaxLossReward(), lr=..., momentum=...)`` with every other argument at
the library's default; the only difference is the update.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # the digits helpers of the examples

from _digits import Digits, accuracy, load_digit_images, load_digits_split, make_lenet_bn, make_mlp

from lfpoptim import LFPOptimizer, SoftmaxLossReward, ZeroParameterWarning

__all__ = [
    "METHODS",
    "Digits",
    "Run",
    "load_digit_images",
    "load_digits_split",
    "make_lenet_bn",
    "make_mlp",
    "run_missing",
    "save_figure",
    "saved_runs_arguments",
    "train",
    "train_both",
]

Method = Literal["sgd", "lfp"]
METHODS: tuple[Method, ...] = ("sgd", "lfp")
MOMENTUM = 0.9
EVAL_BATCH = 256


@dataclass
class Run:
    """One training run: test accuracy after every epoch, and the throughput."""

    method: Method
    lr: float
    seed: int
    accuracies: list[float] = field(default_factory=list)
    images_per_second: float = 0.0
    diverged: bool = False

    @property
    def final(self) -> float:
        """The test accuracy after the last epoch."""
        return self.accuracies[-1]


def test_accuracy(model: nn.Module, data: Digits) -> float:
    """Test accuracy in eval mode, in batches of ``EVAL_BATCH``."""
    model.eval()
    correct = sum(
        accuracy(model, inputs, targets) * len(targets)
        for inputs, targets in zip(data.test_inputs.split(EVAL_BATCH), data.test_targets.split(EVAL_BATCH), strict=True)
    )
    model.train()
    return correct / len(data.test_targets)


def train(
    model: nn.Module,
    method: Method,
    data: Digits,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    lfp_options: Mapping[str, Any] | None = None,
) -> Run:
    """Train ``model`` (in place) with ``method`` and return its test accuracy after every epoch.

    ``lfp_options`` are further ``LFPOptimizer`` arguments (none: the library's defaults).
    """
    torch.manual_seed(seed)  # dropout masks
    if method == "lfp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ZeroParameterWarning)  # the default fill of all-zero tensors, on purpose
            optimizer: torch.optim.Optimizer = LFPOptimizer(
                model, SoftmaxLossReward(), lr=lr, momentum=MOMENTUM, weight_decay=weight_decay, **(lfp_options or {})
            )
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(data.train_targets) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    batch_order = torch.Generator().manual_seed(seed)
    run = Run(method, lr, seed)
    seconds, images = 0.0, 0
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(data.train_targets), generator=batch_order).split(batch_size):
            if run.diverged:
                break
            inputs, targets = data.train_inputs[batch], data.train_targets[batch]
            started = time.perf_counter()
            try:
                if method == "lfp":
                    optimizer.step(inputs, targets)
                else:
                    optimizer.zero_grad()
                    F.cross_entropy(model(inputs), targets).backward()
                    optimizer.step()
            except ValueError as error:  # LFP refuses a step on NaN or Inf: the run has diverged
                if "NaN or Inf" not in str(error):
                    raise
                run.diverged = True
            seconds += time.perf_counter() - started
            images += len(targets)
            schedule.step()
        run.accuracies.append(test_accuracy(model, data))  # after a divergence: what the diverged model scores
    run.images_per_second = images / seconds
    return run


def train_both(
    make_model: Callable[[], nn.Module], data: Digits, *, lr: float, epochs: int, batch_size: int, seed: int
) -> dict[Method, Run]:
    """The same start (``make_model()`` after ``torch.manual_seed(seed)``) trained by SGD and by LFP."""
    torch.manual_seed(seed)
    start = make_model()
    return {
        method: train(copy.deepcopy(start), method, data, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed)
        for method in METHODS
    }


def saved_runs_arguments(parser: argparse.ArgumentParser, *, seeds: str, out: Path) -> None:
    """The options every saved-runs benchmark takes: seeds, threads, where runs are saved, report and plot."""
    parser.add_argument("--seeds", default=seeds)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--report", action="store_true", help="only print the tables of the saved runs")
    parser.add_argument("--plot", type=Path, default=None, help="with --report: write the plot here")


def run_missing(out: Path, seeds: str, names: Iterable[str], run_one: Callable[[str, int], None]) -> None:
    """``run_one(name, seed)`` for every name and seed whose ``out/<name>-<seed>.json`` is not saved yet."""
    names = list(names)
    for seed in (int(seed) for seed in seeds.split(",")):
        for name in names:
            if not (out / f"{name}-{seed}.json").exists():
                run_one(name, seed)


def save_figure(figure: Any, path: Path) -> None:
    """Write a matplotlib figure to ``path`` (its folder made if needed) and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot saved to {path}")
