"""Drop-in LFP step against the explicit LFP step, on the same model and batch (CPU, one thread).

    python benchmarks/dropin_step.py

Both steps run interleaved on identical copies of each model; the table shows the median CPU time
of the running thread and the median of the per-repetition ratio drop-in / explicit.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lfpoptim import DropInLFPOptimizer, LFPOptimizer, SoftmaxLossReward


def configs() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    lenet = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip
    return {"mlp": (mlp, torch.randn(128, 64)), "lenet": (lenet, torch.randn(64, 1, 28, 28))}


def compare(model: nn.Module, inputs: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Median explicit and drop-in step times (s) and the median per-repetition ratio."""
    targets = torch.randint(0, 10, (inputs.shape[0],))
    dropin_model = copy.deepcopy(model)
    explicit = LFPOptimizer(model, SoftmaxLossReward(), lr=1e-3, momentum=0.9)
    dropin = DropInLFPOptimizer(dropin_model, lr=1e-3, momentum=0.9)

    def explicit_step() -> None:
        explicit.zero_grad()
        explicit.step(inputs, targets)

    def dropin_step() -> None:
        dropin.zero_grad()
        F.cross_entropy(dropin_model(inputs), targets).backward()
        dropin.step()

    times: dict[str, list[float]] = {"explicit": [], "dropin": []}
    for repeat in range(repeats + 3):
        order = [("explicit", explicit_step), ("dropin", dropin_step)]
        for key, step in order if repeat % 2 else order[::-1]:
            start = time.thread_time()
            step()
            if repeat >= 3:
                times[key].append(time.thread_time() - start)
    dropin.close()
    ratio = statistics.median(d / e for d, e in zip(times["dropin"], times["explicit"], strict=True))
    return statistics.median(times["explicit"]), statistics.median(times["dropin"]), ratio


def main(repeats: int = 60) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print(f"{'config':>8}  {'explicit ms':>11}  {'drop-in ms':>10}  {'drop-in/explicit':>16}")
    for name, (model, inputs) in configs().items():
        explicit_time, dropin_time, ratio = compare(model, inputs, repeats)
        print(f"{name:>8}  {explicit_time * 1e3:11.2f}  {dropin_time * 1e3:10.2f}  {ratio:16.2f}")


if __name__ == "__main__":
    main()
