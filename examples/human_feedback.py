"""Train a digits classifier from your own yes/no answers (or 1-5 ratings), in the terminal.

The program draws a handwritten digit with characters, shows the model's guess and asks whether it
is right. It never learns the labels of the training digits: your answers are its only teacher
(through `lfpoptim.ScoreReward`, or `lfpoptim.RatingReward` with ``--rating``). After every few
answers it takes one LFP step and shows its accuracy on held-out digits it never trains on. Progress
is saved after every step and resumed at the next start, so training can be spread over sittings.

    python examples/human_feedback.py                      # you judge; Ctrl-D or q saves and quits
    python examples/human_feedback.py --rating             # rate each guess from 1 (wrong) to 5 (right)
    python examples/human_feedback.py --judge oracle --digits 1000   # a simulated person
    python examples/human_feedback.py --smoke --state /tmp/hf.pt            # 64 oracle answers

Answers: ``y`` (yes, right), ``n`` (no, wrong), ``s`` (skip: no opinion), ``q`` (save and quit);
with ``--rating`` a number from 1 to 5 instead of y/n.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _digits import load_digits_split, make_mlp  # examples/_digits.py, next to this file

from lfpoptim import LFPOptimizer, RatingReward, ScoreReward

SHADES = " .:-=+*#%@"  # from blank paper to full ink


class Quit(Exception):  # noqa: N818 (a request, not an error)
    """The person asked to stop; raised inside the reward, so the step changes nothing."""


def draw(image: torch.Tensor) -> str:
    """An 8x8 digit (values in [-1, 1]) as 8 lines of characters, each pixel two characters wide."""
    levels = ((image.view(8, 8) + 1) / 2 * (len(SHADES) - 1)).round().long().clamp(0, len(SHADES) - 1)
    return "\n".join("".join(SHADES[level] * 2 for level in row) for row in levels.tolist())


# --8<-- [start:judges]
def ask_person(images: torch.Tensor, rating: bool) -> Callable[[torch.Tensor, torch.Tensor], list[float]]:
    """A judge that shows each digit and its guess, and asks the person at the terminal.

    The reward calls it as ``judge(shown, ids)``: ``shown.argmax(dim=1)`` are the guesses, ``ids``
    the digits' positions in ``images`` (the only "targets" the training gets).
    """

    def judge(shown: torch.Tensor, ids: torch.Tensor) -> list[float]:
        verdicts = []
        for guess, index in zip(shown.argmax(dim=1).tolist(), ids.tolist(), strict=True):
            print(f"\n{draw(images[index])}\n")
            verdicts.append(ask(guess, rating))
        return verdicts

    return judge


def ask(guess: int, rating: bool) -> float:
    """One answer from the person: +1/-1 (or a rating 1-5), 0 to skip (NaN with ratings)."""
    article = "an" if guess == 8 else "a"
    question = f"Rate the guess {guess}: 1 (wrong) to 5 (right)" if rating else f"Is it {article} {guess}? [y/n]"
    while True:
        try:
            answer = input(f"{question}, s to skip, q to save and quit: ").strip().lower()
        except EOFError:
            raise Quit from None
        if answer == "q":
            raise Quit
        if answer == "s":
            return float("nan") if rating else 0.0
        if not rating and answer in ("y", "n"):
            return 1.0 if answer == "y" else -1.0
        if rating and answer in ("1", "2", "3", "4", "5"):
            return float(answer)
        print("please answer " + ("1-5, s or q" if rating else "y, n, s or q"))


def oracle(labels: torch.Tensor, rating: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A simulated person who knows the labels: yes/no, or 5 for right and 1 for wrong."""

    def judge(shown: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        right = shown.argmax(dim=1) == labels[ids]
        return torch.where(right, 5.0, 1.0) if rating else torch.where(right, 1.0, -1.0)

    return judge


# --8<-- [end:judges]


def next_batch(position: int, size: int, count: int) -> torch.Tensor:
    """Entries ``position .. position + size`` of an endless shuffled order of ``count`` digits.

    Each pass over the digits has its own order, so a resumed sitting continues where the last stopped.
    """
    ids = []
    for step in range(position, position + size):
        epoch, offset = divmod(step, count)
        ids.append(int(torch.randperm(count, generator=torch.Generator().manual_seed(epoch))[offset]))
    return torch.tensor(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", choices=("person", "oracle"), default="person", help="who answers (default: you)")
    parser.add_argument("--rating", action="store_true", help="rate guesses 1-5 instead of yes/no")
    parser.add_argument("--state", type=Path, default=Path("human_feedback.pt"), help="where progress is saved")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming --state")
    parser.add_argument("--batch", type=int, default=8, help="answers per training step (default: 8)")
    parser.add_argument("--lr", type=float, default=0.03, help="learning rate (default: 0.03)")
    parser.add_argument("--clip-norm", type=float, default=None, help="clip each update's norm (default: no clipping)")
    parser.add_argument("--digits", type=int, help="stop after this many answers in this sitting")
    parser.add_argument("--plot", type=Path, help="at the end, plot held-out accuracy against answers to this PNG")
    parser.add_argument("--smoke", action="store_true", help="oracle, 64 answers: a quick check that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.judge, args.digits = "oracle", 64
    torch.set_num_threads(1)

    # --8<-- [start:setup]
    train_x, train_y, test_x, test_y = load_digits_split()
    # a simulated person is the only part of the program that sees the training labels
    judge = ask_person(train_x, args.rating) if args.judge == "person" else oracle(train_y, args.rating)
    torch.manual_seed(0)
    model = make_mlp()
    reward = RatingReward(judge, low=1, high=5) if args.rating else ScoreReward(judge)
    optimizer = LFPOptimizer(model, reward, lr=args.lr, momentum=0.9, clip_norm=args.clip_norm)
    # --8<-- [end:setup]

    progress: dict[str, Any] = {"position": 0, "answers": 0, "history": []}
    if args.state.exists() and not args.fresh:
        # --8<-- [start:resume]
        saved = torch.load(args.state, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        reward.load_state_dict(saved["reward"])
        progress = saved["progress"]
        # --8<-- [end:resume]
        print(f"resumed from {args.state}: {progress['answers']} answers so far")

    history = train(optimizer, reward, (train_x, test_x, test_y), progress, args)
    if args.plot:
        plot(history, args.plot)


def train(
    optimizer: LFPOptimizer,
    reward: ScoreReward,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    progress: dict[str, Any],
    args: argparse.Namespace,
) -> list[tuple[int, float]]:
    """Ask, step and save until the person quits or ``args.digits`` answers; the accuracy history."""
    train_x, test_x, test_y = data
    model = optimizer.model

    def accuracy() -> float:
        with torch.no_grad():
            return float((model(test_x).argmax(dim=1) == test_y).float().mean())

    print(f"held-out accuracy {accuracy():.3f} after {progress['answers']} answers")
    answered = 0
    while args.digits is None or answered < args.digits:
        size = args.batch if args.digits is None else min(args.batch, args.digits - answered)
        ids = next_batch(progress["position"], size, len(train_x))
        try:
            optimizer.step(train_x[ids], ids)
        except (Quit, KeyboardInterrupt):  # raised inside the step: the model is as it was before this batch
            print()
            break
        answered += size
        progress["position"] += size
        progress["answers"] += size
        progress["history"].append((progress["answers"], accuracy()))
        print(f"held-out accuracy {progress['history'][-1][1]:.3f} after {progress['answers']} answers", flush=True)
        # --8<-- [start:save]
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "reward": reward.state_dict()}
        torch.save({**state, "progress": progress}, args.state)
        # --8<-- [end:save]
    if args.state.exists():
        print(f"saved to {args.state}: {progress['answers']} answers, held-out accuracy {accuracy():.3f}")
    return progress["history"]


def plot(history: list[tuple[int, float]], path: Path) -> None:
    """Held-out accuracy against the number of answers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot([answers for answers, _ in history], [value for _, value in history])
    axes.set_xlabel("answers")
    axes.set_ylabel("held-out accuracy")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
