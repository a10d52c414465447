"""Checkpoints and learning-rate schedulers with ``LFPOptimizer``: stop, save, resume, same model.

``LFPOptimizer`` shares ``param_groups`` and ``state`` with its base optimizer, so a scheduler
drives it as it would drive SGD, and ``state_dict()`` is the base optimizer's own. The script
trains the digits MLP (SGD with momentum underneath, linear warm-up then cosine decay) twice from
the same start: once straight through, and once stopped half-way, saved to a file, and resumed in
freshly built objects. The two final models are compared parameter by parameter. Last, the
checkpoint's optimizer state is loaded into a plain ``torch.optim.SGD``, as one would to
fine-tune with gradients.

    python examples/checkpoint_resume.py             # 10 epochs, checkpoint after 5
    python examples/checkpoint_resume.py --smoke     # 2 epochs, checkpoint after 1
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward

BATCH_SIZE = 128


def load() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_digits(return_X_y=True)
    return torch.tensor((images / 16.0 - 0.5) / 0.5, dtype=torch.float32), torch.tensor(labels)


@dataclass
class Training:
    """Everything that changes while training, and so everything a checkpoint must hold."""

    model: nn.Module
    optimizer: LFPOptimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batch_order: torch.Generator
    epoch: int = 0


# --8<-- [start:setup]
def new_training(epochs: int) -> Training:
    """The model, the optimizer and a scheduler: one warm-up epoch, then cosine decay."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), base=torch.optim.SGD, lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        schedulers=[
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=1),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - 1),
        ],
        milestones=[1],
    )
    return Training(model, optimizer, scheduler, torch.Generator().manual_seed(0))


# --8<-- [end:setup]


def train_until(training: Training, inputs: torch.Tensor, targets: torch.Tensor, last_epoch: int) -> None:
    while training.epoch < last_epoch:
        for batch in torch.randperm(len(targets), generator=training.batch_order).split(BATCH_SIZE):
            training.optimizer.step(inputs[batch], targets[batch])
        training.scheduler.step()  # per epoch, exactly as with torch.optim.SGD
        training.epoch += 1


# --8<-- [start:checkpoint]
def save_checkpoint(training: Training, path: Path) -> None:
    torch.save(
        {
            "model": training.model.state_dict(),
            "optimizer": training.optimizer.state_dict(),  # SGD's state dict: momentum buffers, param_groups
            "scheduler": training.scheduler.state_dict(),
            "batch_order": training.batch_order.get_state(),  # so the resumed run sees the same batches
            "epoch": training.epoch,
        },
        path,
    )


def load_checkpoint(training: Training, path: Path) -> None:
    checkpoint: dict[str, Any] = torch.load(path, weights_only=True)
    training.model.load_state_dict(checkpoint["model"])
    training.optimizer.load_state_dict(checkpoint["optimizer"])
    training.scheduler.load_state_dict(checkpoint["scheduler"])
    training.batch_order.set_state(checkpoint["batch_order"])
    training.epoch = checkpoint["epoch"]


# --8<-- [end:checkpoint]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="total epochs, at least 2 (default: 10)")
    parser.add_argument("--smoke", action="store_true", help="2 epochs, checkpoint after 1")
    args = parser.parse_args()
    epochs = 2 if args.smoke else args.epochs
    if epochs < 2:
        parser.error(f"--epochs must be at least 2 (one before the checkpoint, one after), got {epochs}")
    torch.set_num_threads(1)  # one thread: the same operations in the same order, bit for bit
    inputs, targets = load()

    straight = new_training(epochs)
    train_until(straight, inputs, targets, epochs)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        interrupted = new_training(epochs)
        train_until(interrupted, inputs, targets, epochs // 2)
        save_checkpoint(interrupted, path)
        del interrupted  # as if the process had ended

        resumed = new_training(epochs)
        load_checkpoint(resumed, path)
        print(f"resumed at epoch {resumed.epoch}, learning rate {resumed.optimizer.param_groups[0]['lr']:.4f}")
        train_until(resumed, inputs, targets, epochs)

        # The same state dict loads into the plain base optimizer (momentum buffers included).
        sgd = torch.optim.SGD(resumed.model.parameters(), lr=0.1, momentum=0.9)
        sgd.load_state_dict(torch.load(path, weights_only=True)["optimizer"])
        print(f"plain SGD loaded the checkpoint: {len(sgd.state)} momentum buffers")

    differences = [
        float((a.detach() - b.detach()).abs().max())
        for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True)
    ]
    print(f"largest parameter difference, straight vs resumed: {max(differences):.3g}")
    with torch.no_grad():
        accuracy = float((resumed.model(inputs).argmax(dim=1) == targets).float().mean())
    print(f"training accuracy after {epochs} epochs: {accuracy:.4f}")


if __name__ == "__main__":
    main()
