"""Rewards of your own, and training from a yes/no judge that never sees the label.

A reward is any callable ``reward(outputs, targets)`` that returns a tensor shaped like ``outputs``.
The script trains the digits MLP from the same start with three rewards and prints the test
accuracy after every epoch:

* ``SoftmaxLossReward``: the library's default, for comparison;
* ``ClassWeightedReward``: a reward written here, the softmax reward with a weight per class
  (like ``cross_entropy(weight=...)``), here tripling the weight of the digit 8;
* ``ScoreReward`` around a yes/no judge: the judge sees only the model's answer (its argmax) and
  says yes or no; the label reaches the training only through that judgement, as it would from a
  person (``examples/human_feedback.py`` lets a person be the judge).

    python examples/custom_rewards.py              # 15 epochs per reward, about 10 s
    python examples/custom_rewards.py --smoke      # 1 epoch: checks that everything runs
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _digits import load_digits_split, make_mlp, train_epoch  # examples/_digits.py, next to this file

from lfpoptim import LFPOptimizer, ScoreReward, SoftmaxLossReward

Reward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --8<-- [start:class-weighted]
class ClassWeightedReward:
    r"""The softmax reward with a weight per class: \(R = w_t \, y \odot (t - \operatorname{softmax}(y))\)."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(targets, outputs.shape[1]).to(outputs.dtype)
        weight = self.weights.to(outputs.device)[targets][:, None]  # one weight per sample, by its label
        return weight * outputs * (onehot - outputs.softmax(dim=1))


# --8<-- [end:class-weighted]


# --8<-- [start:yes-no]
def oracle_judge(shown: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Stands in for a person: +1 (yes) where the answer is right, -1 (no) where it is wrong.

    ``shown.argmax(dim=1)`` is the answer the model gave; the label is used nowhere else.
    """
    return torch.where(shown.argmax(dim=1) == targets, 1.0, -1.0)


yes_no_reward = ScoreReward(oracle_judge)


# --8<-- [end:yes-no]


def train(reward: Reward, epochs: int) -> tuple[list[float], float]:
    """Test accuracy after every epoch and the final recall of the digit 8; same start and batches for all."""
    train_x, train_y, test_x, test_y = load_digits_split()
    torch.manual_seed(0)
    model = make_mlp()
    optimizer = LFPOptimizer(model, reward, lr=0.1, momentum=0.9)
    batch_order = torch.Generator().manual_seed(0)
    accuracies = []
    for _ in range(epochs):
        train_epoch(optimizer, train_x, train_y, batch_order)
        with torch.no_grad():
            answers = model(test_x).argmax(dim=1)
        accuracies.append(float((answers == test_y).float().mean()))
    recall_of_8 = float((answers[test_y == 8] == 8).float().mean())
    return accuracies, recall_of_8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="epochs per reward (default: 15)")
    parser.add_argument("--smoke", action="store_true", help="1 epoch per reward: a quick check that it runs")
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs
    torch.set_num_threads(1)  # a tiny model: one thread is as fast and makes runs repeatable

    weights = torch.ones(10)
    weights[8] = 3.0
    rewards: dict[str, Reward] = {
        "softmax": SoftmaxLossReward(),
        "class-weighted": ClassWeightedReward(weights),
        "yes/no judge": yes_no_reward,
    }
    results = {name: train(reward, epochs) for name, reward in rewards.items()}
    curves = {name: curve for name, (curve, _) in results.items()}

    print("test accuracy per epoch")
    print("epoch  " + "  ".join(f"{name:>14}" for name in curves))
    for epoch in range(epochs):
        print(f"{epoch + 1:5d}  " + "  ".join(f"{curve[epoch]:14.4f}" for curve in curves.values()))
    print("recall of the digit 8 after the last epoch")
    print("       " + "  ".join(f"{recall:14.4f}" for _, recall in results.values()))


if __name__ == "__main__":
    main()
