"""Train a timm model on scikit-learn's digits with LFP: one line of lfpoptim, any timm architecture.

The 8x8 digits are upsampled (bilinear) to ``--image-size`` pixels and repeated over three
channels. ``timm.create_model(name, pretrained=..., num_classes=10)`` builds the model;
``LFPOptimizer(model, SoftmaxLossReward())`` chooses the rules by the architecture name
(``preset="auto"``: ``resnet`` for ResNets, VGGs, RegNets, ...; ``vit`` for vision transformers;
``default`` otherwise). ``strict=True`` makes sure every operation of the model has a rule.

Everything else is the library's default: parameters that timm initialises to exactly zero are
given a small magnitude by the optimizer (it says so in one warning), and the learning rate is
SGD's. ``--pretrained`` loads timm's weights, which must be in the local Hugging Face cache when
``HF_HUB_OFFLINE=1``.

    python examples/timm_digits.py                               # resnet18, 32x32, 5 epochs
    python examples/timm_digits.py --model convnext_atto --epochs 3
    python examples/timm_digits.py --model vit_tiny_patch16_224 --timm-kwargs img_size=32,patch_size=4
    python examples/timm_digits.py --model resnet18 --pretrained --image-size 64
    python examples/timm_digits.py --smoke                       # a few batches: checks that everything runs
"""

from __future__ import annotations

import argparse
import ast
import time

import timm
import torch
from _digits import load_digit_images  # examples/_digits.py, next to this file
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward

BATCH_SIZE = 64
LEARNING_RATE = 0.05
MOMENTUM = 0.9


def parse_kwargs(text: str) -> dict[str, object]:
    """``"img_size=32,patch_size=4"`` -> ``{"img_size": 32, "patch_size": 4}``."""
    kwargs: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        kwargs[key.strip()] = ast.literal_eval(value.strip())
    return kwargs


def create_model(name: str, pretrained: bool, kwargs: dict[str, object]) -> nn.Module:
    """``timm.create_model`` with a 10-class head; says what to do when pretrained weights cannot be had."""
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=10, **kwargs)
    except OSError as error:  # huggingface_hub's "not in the local cache" and network errors
        if not pretrained:
            raise
        raise SystemExit(
            f"timm could not load the pretrained weights of {name}: {type(error).__name__}. With "
            "HF_HUB_OFFLINE=1 they must be in the local Hugging Face cache already: fetch them once with network "
            f"access (python -c \"import timm; timm.create_model('{name}', pretrained=True)\"), "
            "or run without --pretrained"
        ) from error


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(inputs[i : i + 256]).argmax(dim=1) == labels[i : i + 256]).sum())
            for i in range(0, len(inputs), 256)
        )
    model.train()
    return correct / len(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="a timm architecture name (default: resnet18)")
    parser.add_argument("--pretrained", action="store_true", help="start from timm's pretrained weights")
    parser.add_argument("--image-size", type=int, default=32, help="pixels the digits are upsampled to")
    parser.add_argument("--timm-kwargs", type=parse_kwargs, default={}, help="e.g. img_size=32,patch_size=4")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="one epoch of 3 batches, to check that everything runs")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train_x, train_y, test_x, test_y = load_digit_images(args.image_size)
    model = create_model(args.model, args.pretrained, args.timm_kwargs)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=args.lr, momentum=MOMENTUM, strict=True)
    print(f"preset {optimizer.preset.name!r} (ε = {optimizer.epsilon:g})")

    epochs, batches = (1, 3) if args.smoke else (args.epochs, None)
    generator = torch.Generator().manual_seed(args.seed)
    print("epoch  mean reward  test accuracy  seconds")
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        order = torch.randperm(len(train_x), generator=generator)
        rewards = []
        for number, start in enumerate(range(0, len(order), BATCH_SIZE)):
            if batches is not None and number == batches:
                break
            chosen = order[start : start + BATCH_SIZE]
            rewards.append(optimizer.step(train_x[chosen], train_y[chosen]).mean_reward)
        seconds = time.perf_counter() - started
        mean_reward = sum(rewards) / len(rewards)
        print(f"{epoch:5d}  {mean_reward:11.4f}  {accuracy(model, test_x, test_y):13.3f}  {seconds:7.1f}")


if __name__ == "__main__":
    main()
