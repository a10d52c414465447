"""Learning from discrete feedback: LFP's feedback rewards against REINFORCE on the same judge.

A simulated judge sees only the answer the model chose for each training digit and compares it with
the label; the label reaches training only through its verdict. Both methods train the digits MLP
64-256-256-10 from the same start on the same batches (SGD, lr 0.1, momentum 0.9, batch 128):

* LFP: ``LFPOptimizer(model, reward, lr=0.1, momentum=0.9)`` with the library's defaults otherwise,
  the reward being `ScoreReward`, `RatingReward` or `PreferenceReward` around the judge;
* REINFORCE: ``loss = -mean(A * log softmax(y)[answer])`` (the score ``A`` minus the same running
  baseline), and for preferences the Bradley-Terry loss ``-mean(d * log sigmoid(y_w - y_l))``;
* SGD, same seed: SGD whose gradient at the logits is minus LFP's seed ``R / y``: LFP without its
  weight scaling, which must match REINFORCE (it checks that the reward is REINFORCE's seed).

Judges (``--conditions``):

* ``full``: every answer judged, +1 right, -1 wrong;
* ``quarter``: a random quarter of each batch judged, the rest scored 0 (no opinion);
* ``flip10``, ``flip30``: every answer judged, 10 % / 30 % of the verdicts flipped at random;
* ``graded``: a 1-5 rating, 5 for the right answer, 2 for a wrong answer whose digit looks like
  the right one, 1 for other wrong answers (`GradedJudge`);
* ``preference``: two answers per digit (the best guess and a second drawn from the softmax); the
  judge prefers the right one, and has no preference when neither is right.

It prints the final test accuracy (mean and range over the seeds) and, with ``--plot``, draws the
test accuracy against the number of judged samples.

    python benchmarks/feedback.py                                  # 3 seeds x 15 epochs, about 3 minutes
    python benchmarks/feedback.py --plot docs/plots/feedback_curves.png --json feedback.json
    python benchmarks/feedback.py --choice sample --conditions full,quarter
    python benchmarks/feedback.py --clip-norm 1.0                  # LFP with its update norm clipped
    python benchmarks/feedback.py --smoke                          # 1 seed, 1 epoch: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from _digits import BATCH_SIZE, load_digits_split, make_mlp

from lfpoptim import LFPOptimizer, PreferenceReward, RatingReward, ScoreReward
from lfpoptim.rewards_feedback import Choice, choose

CONDITIONS = ("full", "quarter", "flip10", "flip30", "graded", "preference")
FLIPPED = {"flip10": 0.1, "flip30": 0.3}
Judge = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_judge(condition: str, generator: torch.Generator) -> Judge:
    """``judge(answers, labels, outputs)``-style verdicts for a condition; its coin flips come from ``generator``."""

    def verdicts(answers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scores = torch.where(answers == labels, 1.0, -1.0)
        if condition == "quarter":
            judged = torch.zeros(len(labels), dtype=torch.bool)
            judged[torch.randperm(len(labels), generator=generator)[: len(labels) // 4]] = True
            scores = torch.where(judged, scores, 0.0)
        elif condition in FLIPPED:
            flipped = torch.rand(len(labels), generator=generator) < FLIPPED[condition]
            scores = torch.where(flipped, -scores, scores)
        return scores

    return verdicts


class GradedJudge:
    """A 1-5 rating of an answer: 5 if right, 2 if wrong but the digits look alike, else 1.

    The look of a digit is the mean of its training images; for each label the three wrong answers
    whose mean image is closest to the label's get 2 ("wrong, but I see why"), the other six 1.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        means = torch.stack([images[labels == digit].mean(dim=0) for digit in range(10)])
        order = torch.cdist(means, means).argsort(dim=1)  # order[t, 0] == t: the label itself
        closeness = torch.empty(10, 10, dtype=torch.long)
        closeness.scatter_(1, order, torch.arange(10).expand(10, 10).clone())
        self.ratings = torch.where(closeness == 0, 5.0, torch.where(closeness <= 3, 2.0, 1.0))

    def __call__(self, answers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.ratings[labels, answers]


def preference(first: torch.Tensor, second: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """+1 when only the first answer is right, -1 when only the second is, 0 otherwise."""
    return (first == labels).float() - (second == labels).float()


@dataclass(frozen=True)
class Setting:
    """What every method of one comparison shares: the judge, how answers are chosen, the baseline."""

    condition: str
    choice: Choice = "argmax"
    baseline: float | None = None
    lfp_options: tuple[tuple[str, Any], ...] = ()  # LFPOptimizer settings other than the defaults, for LFP only


@dataclass
class Baseline:
    """REINFORCE's running mean of judged scores, as `ScoreReward` keeps it (decay ``None``: no baseline)."""

    decay: float | None
    value: float = 0.0

    def advantages(self, scores: torch.Tensor, judged: torch.Tensor) -> torch.Tensor:
        if self.decay is None:
            return torch.where(judged, scores, 0.0)
        advantages = torch.where(judged, scores - self.value, 0.0)
        if judged.any():
            self.value = self.decay * self.value + (1 - self.decay) * float(scores[judged].mean())
        return advantages


def feedback_reward(setting: Setting, seed: int, graded: GradedJudge) -> Callable[..., torch.Tensor]:
    """The library's adapter for the setting's judge (its coins and choices drawn from the seed)."""
    choices = torch.Generator().manual_seed(seed + 1)
    if setting.condition == "preference":
        return PreferenceReward(preference, choice=setting.choice, generator=choices)
    common = {"choice": setting.choice, "baseline": setting.baseline, "generator": choices}
    if setting.condition == "graded":
        return RatingReward(lambda shown, labels: graded(shown.argmax(dim=1), labels), **common)
    judge = make_judge(setting.condition, torch.Generator().manual_seed(seed))
    return ScoreReward(lambda shown, labels: judge(shown.argmax(dim=1), labels), **common)


class SameSeedSGD:
    """SGD whose gradient at the logits is minus LFP's seed: LFP without the rules' weight scaling."""

    def __init__(self, model: nn.Module, reward: Callable[..., torch.Tensor]) -> None:
        self.model = model
        self.reward = reward
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        outputs = self.model(inputs)
        detached = outputs.detach()
        seed = self.reward(detached, labels) / torch.where(detached == 0, 1.0, detached)
        self.optimizer.zero_grad()
        (-(seed * outputs).sum() / len(outputs)).backward()
        self.optimizer.step()


class Reinforce:
    """REINFORCE with SGD on the same judge, written independently of the library's adapters."""

    def __init__(self, model: nn.Module, setting: Setting, seed: int, graded: GradedJudge) -> None:
        self.model = model
        self.setting = setting
        self.graded = graded
        self.baseline = Baseline(setting.baseline)
        self.judge = make_judge(setting.condition, torch.Generator().manual_seed(seed))
        self.choices = torch.Generator().manual_seed(seed + 1)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        outputs = self.model(inputs)
        detached = outputs.detach()
        first = choose(detached, self.setting.choice, 0.1, self.choices)
        if self.setting.condition == "preference":  # the Bradley-Terry loss
            others = detached.softmax(dim=1).scatter(1, first[:, None], 0.0)
            second = torch.multinomial(others, 1, generator=self.choices).squeeze(1)
            d = preference(first, second, labels)
            winner, loser = torch.where(d > 0, first, second), torch.where(d > 0, second, first)
            margin = outputs.gather(1, winner[:, None]) - outputs.gather(1, loser[:, None])
            loss = -(d.abs() * F.logsigmoid(margin.squeeze(1))).mean()
        else:
            if self.setting.condition == "graded":
                scores = self.graded(first, labels).sub(1.0).div(2.0).sub(1.0)  # 1..5 -> -1..1, as RatingReward
                judged = torch.ones_like(scores, dtype=torch.bool)
            else:
                scores = self.judge(first, labels)
                judged = scores != 0
            advantages = self.baseline.advantages(scores, judged)
            if self.setting.choice == "epsilon-greedy":  # truncated importance weight min(1, p_a / mu_a)
                p_chosen = detached.softmax(dim=1).gather(1, first[:, None]).squeeze(1)
                mu = torch.where(first == detached.argmax(dim=1), 1 - 0.1 + 0.1 / 10, 0.1 / 10)
                advantages = advantages * (p_chosen / mu).clamp(max=1.0)
            loss = -(advantages * outputs.log_softmax(dim=1).gather(1, first[:, None]).squeeze(1)).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


@dataclass
class Curve:
    """Test accuracy after each epoch against the number of judged samples so far."""

    judged: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)


def judged_per_epoch(condition: str, samples: int) -> int:
    """How many verdicts an epoch of ``samples`` training digits asks for."""
    if condition == "quarter":
        return sum(len(batch) // 4 for batch in torch.arange(samples).split(BATCH_SIZE))
    return samples


METHODS = ("LFP", "REINFORCE", "SGD, same seed")


def run(method: str, setting: Setting, seed: int, epochs: int) -> Curve:
    """Train one method on one judge from the seed's start and batches; the test accuracy per epoch."""
    train_x, train_y, test_x, test_y = load_digits_split()
    graded = GradedJudge(train_x, train_y)
    torch.manual_seed(seed)
    model = make_mlp()
    step: Callable[[torch.Tensor, torch.Tensor], Any]
    if method == "LFP":
        options = {"lr": 0.1, "momentum": 0.9, **dict(setting.lfp_options)}
        step = LFPOptimizer(model, feedback_reward(setting, seed, graded), **options).step
    elif method == "REINFORCE":
        step = Reinforce(model, setting, seed, graded).step
    else:
        step = SameSeedSGD(model, feedback_reward(setting, seed, graded)).step
    batch_order = torch.Generator().manual_seed(seed)
    curve = Curve()
    for epoch in range(epochs):
        for batch in torch.randperm(len(train_y), generator=batch_order).split(BATCH_SIZE):
            step(train_x[batch], train_y[batch])
        with torch.no_grad():
            accuracy = float((model(test_x).argmax(dim=1) == test_y).float().mean())
        curve.judged.append((epoch + 1) * judged_per_epoch(setting.condition, len(train_y)))
        curve.accuracy.append(accuracy)
    return curve


def plot(results: dict[str, dict[str, list[Curve]]], path: Path) -> None:
    """Test accuracy against judged samples, one panel per condition, mean and range over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(results)
    columns = min(3, len(conditions))
    rows = -(-len(conditions) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False, sharey=True)
    for axis, condition in zip(axes.flat, conditions, strict=False):
        for method, color in zip(METHODS, ("tab:blue", "tab:orange", "tab:gray"), strict=True):
            curves = results[condition][method]
            judged = curves[0].judged
            accuracy = torch.tensor([curve.accuracy for curve in curves])
            style = ":" if method == "SGD, same seed" else "-"
            axis.plot(judged, accuracy.mean(dim=0), style, color=color, label=method)
            axis.fill_between(judged, accuracy.amin(dim=0), accuracy.amax(dim=0), color=color, alpha=0.2)
        axis.set_title(condition)
        axis.set_xlabel("judged samples")
        axis.xaxis.set_major_formatter(lambda value, _: f"{value / 1000:g}k")
        axis.grid(alpha=0.3)
    for axis in axes.flat[len(conditions) :]:
        axis.set_visible(False)
    axes[0, 0].set_ylabel("test accuracy")
    axes[0, 0].legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    """Run the comparison given on the command line (``argv``; ``sys.argv`` when ``None``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma-separated, of {CONDITIONS}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--choice", default="argmax", choices=("argmax", "sample", "epsilon-greedy"))
    parser.add_argument("--baseline", type=float, default=None, help="running-baseline decay for all methods")
    parser.add_argument("--lfp-lr", type=float, default=0.1, help="LFP's learning rate (default 0.1, as SGD's)")
    parser.add_argument("--feedback-reduction", help="LFP's feedback_reduction (default: LFPOptimizer's)")
    parser.add_argument("--clip-norm", type=float, help="LFP's clip_norm (default: none)")
    parser.add_argument("--plot", type=Path, help="write the accuracy curves to this PNG")
    parser.add_argument("--json", type=Path, help="write every curve to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 1 epoch: checks that everything runs")
    args = parser.parse_args(argv)
    seeds, epochs = (1, 1) if args.smoke else (args.seeds, args.epochs)
    conditions = args.conditions.split(",")
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        parser.error(f"unknown conditions {unknown}; choose from {CONDITIONS}")
    torch.set_num_threads(1)  # a tiny model: one thread is as fast and makes runs repeatable

    lfp_options = {"lr": args.lfp_lr, "feedback_reduction": args.feedback_reduction, "clip_norm": args.clip_norm}
    lfp_options = {name: value for name, value in lfp_options.items() if value is not None}
    print(f"choice={args.choice}, baseline={args.baseline}, LFP {lfp_options}, {seeds} seed(s), {epochs} epoch(s)")
    print("final test accuracy, mean (min-max) over the seeds")
    print(f"{'judge':>10}  " + "  ".join(f"{method:>19}" for method in METHODS) + "  LFP - REINFORCE")
    results: dict[str, dict[str, list[Curve]]] = {}
    for condition in conditions:
        setting = Setting(condition, args.choice, args.baseline, tuple(lfp_options.items()))
        results[condition] = {
            method: [run(method, setting, seed, epochs) for seed in range(seeds)] for method in METHODS
        }
        finals = {method: [curve.accuracy[-1] for curve in curves] for method, curves in results[condition].items()}
        cells = "  ".join(f"{sum(v) / len(v):.3f} ({min(v):.3f}-{max(v):.3f})" for v in finals.values())
        gap = (sum(finals["LFP"]) - sum(finals["REINFORCE"])) / seeds
        print(f"{condition:>10}  {cells}  {gap:+15.3f}", flush=True)
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    if args.json:
        serial = {c: {m: [vars(curve) for curve in cs] for m, cs in r.items()} for c, r in results.items()}
        settings = {"choice": args.choice, "baseline": args.baseline}
        args.json.write_text(json.dumps({**settings, "curves": serial}))


if __name__ == "__main__":
    main()
