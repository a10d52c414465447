"""Soak run: 1,000+ LFP steps on a CNN, recording memory and registered hooks every 100 steps.

A long run must not leak: no hook may outlive a step, no attribute may be left on a parameter
(the reference implementation leaves ``.feedback`` on every one), no torch-function mode may stay
on the stack, and memory must stay flat. Every ``--every`` steps (and once before the first) the
script records, outside any step:

* ``rss_mib``: the resident set size of the process (``psutil``, or ``/proc/self/statm``);
* ``tensors``: the tensors alive in the process (counted through ``gc`` after a collection): a
  leak of one tensor per step shows here long before it shows in the RSS;
* ``hooks``: hooks registered on the model's modules and parameters plus torch's global module
  hooks, and ``hooks_added``: those beyond the ones the model had before the optimizer was built
  (none for either optimizer: ``DropInLFPOptimizer`` wraps ``model.forward`` instead, an instance
  attribute that ``close()`` removes, which the run checks at the end);
* ``modes``: the depth of the torch-function mode stack;
* ``param_attributes``: attributes set on parameter objects (``vars(param)``), over all of them.

The model is a small residual CNN in train mode (convolutions, BatchNorm, in-place ReLU,
``x += shortcut``, max pooling, dropout, average pooling) on a fixed stream of random 1x8x8
batches of 32 whose class is the quartile of the input's mean, so that the logged batch accuracy
shows it learning. ``lfp`` trains it with ``LFPOptimizer(model, SoftmaxLossReward(), lr=0.05,
momentum=0.9)``; ``dropin`` with ``DropInLFPOptimizer`` and the unchanged cross-entropy loop.

The report gives the RSS growth from the first checkpoint after warm-up (step ``--every``) to
the last, which leaves out what the first steps allocate once (momentum buffers, allocator
pools), and the hooks left at the end.

Run from the repository root::

    python benchmarks/soak.py                                  # 1,000 steps of each optimizer
    python benchmarks/soak.py --steps 5000 --every 500 --json soak.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
import torch.nn.modules.module as module_globals
from torch import nn

from lfpoptim import DropInLFPOptimizer, LFPOptimizer, SoftmaxLossReward

OptimizerKind = Literal["lfp", "dropin"]
CLASSES = 4


class ResidualCNN(nn.Module):
    """conv-bn-relu, a residual block (``x += shortcut``, in-place ReLU), pool, dropout, conv, head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU(inplace=True)
        self.head = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Dropout(0.1),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, CLASSES),
        )
        with torch.no_grad():  # LFP never moves a zero: BatchNorm's biases start small, not at 0
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.bias.fill_(1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        shortcut = x
        x = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        x += shortcut
        return self.head(self.act2(x))


def batches(seed: int, batch_size: int = 32) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless, reproducible stream of random batches (inputs 1x8x8, `CLASSES` classes).

    The class of an input is the quartile of its mean (standard normal quantiles), so the task is
    learnable and the logged accuracy shows the run training.
    """
    generator = torch.Generator().manual_seed(seed)
    quartiles = torch.tensor([-0.6745, 0.0, 0.6745])
    while True:
        inputs = torch.randn(batch_size, 1, 8, 8, generator=generator)
        standardised_mean = inputs.mean(dim=(1, 2, 3)) * 8.0  # the mean of 64 N(0, 1) values, times sqrt(64)
        yield inputs, torch.bucketize(standardised_mean, quartiles)


def rss_mib() -> float:
    """Resident set size of this process in MiB (psutil if installed, else ``/proc/self/statm``)."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return psutil.Process().memory_info().rss / 2**20


def live_tensors() -> int:
    """Tensors alive in the process, after a garbage collection."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance() touches deprecated module attributes (torch.distributed)
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def _is_hook_dict(name: str, value: object) -> bool:
    """A dict of registered hooks (not one of the flag dicts that say how a hook is called)."""
    flags = ("_with_kwargs", "_always_called", "_is_full_backward_hook")
    return "hook" in name and isinstance(value, dict) and not name.endswith(flags)


def count_hooks(model: nn.Module) -> int:
    """Hooks registered on the model's modules and parameters, plus torch's global module hooks."""
    total = sum(
        len(value) for module in model.modules() for name, value in vars(module).items() if _is_hook_dict(name, value)
    )
    for param in model.parameters():
        total += len(param._backward_hooks or {}) + len(param._post_accumulate_grad_hooks or {})
    return total + sum(len(value) for name, value in vars(module_globals).items() if _is_hook_dict(name, value))


@dataclass
class Checkpoint:
    """What the process looks like between two steps."""

    step: int
    rss_mib: float
    tensors: int
    hooks: int
    hooks_added: int
    modes: int
    param_attributes: int
    accuracy: float | None
    """Accuracy on the last step's batch; ``None`` before the first step."""


@dataclass
class SoakResult:
    """A soak run: its checkpoints and the hooks left when it ended."""

    optimizer: OptimizerKind
    steps: int
    checkpoints: list[Checkpoint] = field(default_factory=list)
    hooks_added_at_end: int = 0
    hooks_added_after_close: int | None = None
    forward_left_after_close: bool | None = None
    """Whether ``close()`` left an instance attribute ``forward`` on the model (drop-in only)."""

    @property
    def rss_growth_mib(self) -> float:
        """RSS at the last checkpoint minus RSS at the first one after warm-up (the second)."""
        return self.checkpoints[-1].rss_mib - self.checkpoints[1].rss_mib

    @property
    def tensor_growth(self) -> int:
        """Live tensors at the last checkpoint minus those at the first one after warm-up."""
        return self.checkpoints[-1].tensors - self.checkpoints[1].tensors


def make_step(
    kind: OptimizerKind, model: nn.Module
) -> tuple[torch.optim.Optimizer, Callable[[torch.Tensor, torch.Tensor], float]]:
    """The optimizer and one training step, which returns the accuracy on its batch."""
    if kind == "lfp":
        lfp = LFPOptimizer(model, SoftmaxLossReward(), lr=0.05, momentum=0.9)

        def lfp_step(inputs: torch.Tensor, targets: torch.Tensor) -> float:
            outputs = lfp.step(inputs, targets).outputs
            return float((outputs.argmax(dim=1) == targets).float().mean())

        return lfp, lfp_step
    dropin = DropInLFPOptimizer(model, lr=0.05, momentum=0.9)

    def dropin_step(inputs: torch.Tensor, targets: torch.Tensor) -> float:
        dropin.zero_grad()
        outputs = model(inputs)
        F.cross_entropy(outputs, targets).backward()
        dropin.step()
        return float((outputs.detach().argmax(dim=1) == targets).float().mean())

    return dropin, dropin_step


def soak(kind: OptimizerKind, steps: int = 1000, every: int = 100, seed: int = 0) -> SoakResult:
    """Train for ``steps`` steps, recording a `Checkpoint` before the first and every ``every`` steps."""
    if steps < 2 * every:
        raise ValueError(f"steps must be at least 2 * every to measure growth after warm-up, got {steps} and {every}")
    torch.manual_seed(seed)
    model = ResidualCNN()
    hooks_before = count_hooks(model)
    optimizer, step = make_step(kind, model)
    result = SoakResult(optimizer=kind, steps=steps)

    def record(done: int, accuracy: float | None) -> None:
        hooks = count_hooks(model)
        result.checkpoints.append(
            Checkpoint(
                step=done,
                rss_mib=rss_mib(),
                tensors=live_tensors(),
                hooks=hooks,
                hooks_added=hooks - hooks_before,
                modes=torch._C._len_torch_function_stack(),
                param_attributes=sum(len(vars(param)) for param in model.parameters()),
                accuracy=accuracy,
            )
        )

    record(0, None)
    stream = batches(seed + 1)
    for done in range(1, steps + 1):
        accuracy = step(*next(stream))
        if done % every == 0:
            record(done, accuracy)
    result.hooks_added_at_end = count_hooks(model) - hooks_before
    if isinstance(optimizer, DropInLFPOptimizer):
        optimizer.close()
        result.hooks_added_after_close = count_hooks(model) - hooks_before
        result.forward_left_after_close = "forward" in vars(model)
    return result


def report(result: SoakResult) -> str:
    """The checkpoints as a table, and the summary."""
    lines = [
        f"{result.optimizer}: {result.steps} steps",
        f"{'step':>6}  {'RSS MiB':>8}  {'tensors':>7}  {'hooks':>5}  {'added':>5}  {'modes':>5}  "
        f"{'attrs':>5}  {'accuracy':>8}",
    ]
    for point in result.checkpoints:
        value = "" if point.accuracy is None else f"{point.accuracy:.3f}"
        lines.append(
            f"{point.step:>6}  {point.rss_mib:>8.1f}  {point.tensors:>7}  {point.hooks:>5}  {point.hooks_added:>5}  "
            f"{point.modes:>5}  {point.param_attributes:>5}  {value:>8}"
        )
    after_close = ""
    if result.hooks_added_after_close is not None:
        forward = "left on the model" if result.forward_left_after_close else "removed"
        after_close = f", after close(): {result.hooks_added_after_close}; forward wrapper {forward}"
    lines.append(
        f"RSS growth from step {result.checkpoints[1].step} to {result.checkpoints[-1].step}: "
        f"{result.rss_growth_mib:+.2f} MiB; live tensors {result.tensor_growth:+d}; "
        f"hooks added at the end: {result.hooks_added_at_end}{after_close}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps per optimizer (default 1000)")
    parser.add_argument("--every", type=int, default=100, help="steps between checkpoints (default 100)")
    parser.add_argument("--optimizers", default="lfp,dropin", help="comma-separated: lfp, dropin")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", help="write every checkpoint to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for kind in args.optimizers.split(","):
        if kind not in ("lfp", "dropin"):
            parser.error(f"unknown optimizer {kind!r}; choose from lfp, dropin")
        results.append(soak(kind, args.steps, args.every, args.seed))
        print(report(results[-1]), end="\n\n", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                [
                    {**asdict(result), "rss_growth_mib": result.rss_growth_mib, "tensor_growth": result.tensor_growth}
                    for result in results
                ],
                out,
                indent=1,
            )
    leaked = [
        result.optimizer
        for result in results
        if result.hooks_added_at_end
        or result.hooks_added_after_close
        or result.forward_left_after_close
        or result.checkpoints[-1].modes
        or result.checkpoints[-1].param_attributes
    ]
    if leaked:
        print(f"LEAK: hooks, modes, attributes or a forward wrapper left by {', '.join(leaked)}", file=sys.stderr)
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
