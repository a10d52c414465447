"""A preset of your own: a rule for an operation lfpoptim does not know, registered by name.

A SIREN-style network uses ``torch.sin`` as its activation. lfpoptim's built-in presets have no
rule for ``sin``, so under ``preset="default"`` reward crosses it as a gradient would (times
``cos(z)``) and the optimizer warns once. LFP treats element-wise activations with the identity
rule; the preset ``sine`` below is the default rule map plus that rule for ``torch.sin``, and
``module_types=("Sine",)`` makes ``preset="auto"`` choose it for any model with a ``Sine``
module. A package ships such a preset to others through the entry-point group
``lfpoptim.presets`` (see docs/howto/presets-plugin.md).

The script trains a sine MLP on digits under both presets from the same start, and prints how
much the first step's feedback differs between the two rule maps.

    python examples/preset_plugin.py              # 10 epochs per preset
    python examples/preset_plugin.py --smoke      # 1 epoch: checks that everything runs
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F
from _digits import BATCH_SIZE, accuracy, load_digits_split, train_epoch  # examples/_digits.py, next to this file
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward
from lfpoptim.presets import get_preset, register_preset
from lfpoptim.rules import DropoutMode, IdentityActivationRule, RuleMap, UncoveredOperationWarning


# --8<-- [start:preset]
class Sine(nn.Module):
    """The periodic activation of SIREN networks, \\(\\sin(z)\\)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(z)


@register_preset("sine", epsilon=1e-6, module_types=("Sine",))
def sine(epsilon: float = 1e-6, dropout: DropoutMode = "reference") -> RuleMap:
    """The default rules, plus the identity rule for ``torch.sin`` (SIREN-style networks)."""
    rules = get_preset("default").rules(epsilon, dropout)
    rules[torch.sin] = IdentityActivationRule(name="identity (sine)")
    rules[torch.Tensor.sin] = IdentityActivationRule(name="identity (sine)")
    return rules


# --8<-- [end:preset]


def make_sine_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), Sine(), nn.Linear(256, 256), Sine(), nn.Linear(256, 10))


def train(preset: str, epochs: int) -> tuple[str, list[float], list[str]]:
    """Train a fresh sine MLP; return the preset the optimizer used, the test accuracies and its warnings."""
    train_x, train_y, test_x, test_y = load_digits_split()
    model = make_sine_mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UncoveredOperationWarning)
        # --8<-- [start:use]
        optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9, preset=preset)
        # --8<-- [end:use]
        batch_order = torch.Generator().manual_seed(0)
        accuracies = []
        for _ in range(epochs):
            train_epoch(optimizer, train_x, train_y, batch_order)
            accuracies.append(accuracy(model, test_x, test_y))
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, UncoveredOperationWarning)]
    return optimizer.preset.name, accuracies, messages


def feedback_similarity() -> float:
    """Cosine similarity of the first batch's feedback (all parameters) under ``default`` and ``sine``."""
    train_x, train_y, _, _ = load_digits_split()
    flat = []
    for preset in ("default", "sine"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UncoveredOperationWarning)
            optimizer = LFPOptimizer(make_sine_mlp(), SoftmaxLossReward(), preset=preset)
            feedback = optimizer.feedback(train_x[:BATCH_SIZE], train_y[:BATCH_SIZE])
        flat.append(torch.cat([value.flatten() for value in feedback.values()]))
    return float(F.cosine_similarity(flat[0], flat[1], dim=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per preset (default: 10)")
    parser.add_argument("--smoke", action="store_true", help="1 epoch per preset: a quick check that it runs")
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs
    torch.set_num_threads(1)

    for asked in ("default", "auto"):
        used, accuracies, messages = train(asked, epochs)
        print(f"preset={asked!r} -> {used!r}: test accuracy per epoch " + " ".join(f"{a:.3f}" for a in accuracies))
        for message in messages:
            print(f"  warning: {message}")
    print(f"cosine similarity of the first step's feedback, default vs sine rules: {feedback_similarity():.4f}")


if __name__ == "__main__":
    main()
