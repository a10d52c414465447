"""Step time and peak memory of an LFP step against a plain SGD step on the same model and batch.

For each configuration the script builds one model, gives an identical copy of it to each method
and runs, on the same fixed batch:

* **SGD**: ``zero_grad()``, forward, cross-entropy, ``backward()``, ``SGD(lr=0.1, momentum=0.9).step()``;
* **LFP**: ``zero_grad()``, ``LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9).step(x, y)``;
* **reference**, only when the package ``lfprop`` is importable: the training step of its README
  (``LFPEpsilonComposite`` registered around forward and backward, ``param.grad = -param.feedback``,
  SGD step).

``zero_grad(set_to_none=True)`` is part of every step, as in a training loop. After warm-up
steps, the methods run in turn within each repetition, the first one rotating, so that drift of
the machine (clock frequency, caches, other load) reaches all of them alike. The table shows
median step times and, as the time ratio, the median over repetitions of a method's time divided
by SGD's in the same repetition: pairing makes it steadier than the ratio of the medians.

Clocks: on CPU torch runs on one thread (``torch.set_num_threads(1)``), so the CPU time of the
calling thread (``time.thread_time``) is the work of the step itself, kernel time such as page
faults included, without the time the thread waited while other processes held the cores. It is
the default clock on CPU and far steadier than wall time on a shared machine. Wall time
(``time.perf_counter``, after ``torch.cuda.synchronize`` on CUDA) is always recorded too, and is
the only clock on CUDA. ``--repeats`` defaults to as many repetitions as fit in about 15 s of
step time (10 to 200).

Memory is measured after the timing, on one extra step of SGD and of LFP (``benchmarks/memory.py``):
the model's parameters, buffers and momentum (``state``, the same for both) plus the most bytes
the step had alive at once on top of them (``step``); ``peak = state + step``.

Run from the repository root::

    python benchmarks/step_time.py
    python benchmarks/step_time.py --configs mlp,vgg --repeats 50 --json step_time.json
    python benchmarks/step_time.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # the profiler behind the CPU memory measurement logs to stderr

import timm
import torch
import torch.nn.functional as F
from memory import state_bytes, step_peak_bytes
from torch import nn

from lfpoptim import LFPOptimizer, ZeroParameterWarning
from lfpoptim.rewards import SoftmaxLossReward

LEARNING_RATE = 0.1
MOMENTUM = 0.9
NUM_CLASSES = 10
MIB = 2**20
TIME_BUDGET_S = 15.0
MIN_REPEATS, MAX_REPEATS = 10, 200
CLOCKS = ("cpu", "wall")


@dataclass(frozen=True)
class Config:
    """A model and the shape of the batch it is timed on."""

    name: str
    build: Callable[[], nn.Module]
    batch_size: int
    input_shape: tuple[int, ...]


def mlp() -> nn.Module:
    """MLP 64-256-256-10 with ReLU."""
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, NUM_CLASSES))


def lenet() -> nn.Module:
    """LeNet-5 style CNN for 1x28x28 inputs (valid 5x5 convolutions: 28 -> 24 -> 12 -> 8 -> 4)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, NUM_CLASSES),
    )


def vgg() -> nn.Module:
    """VGG-style CNN: three stages of (conv3x3-BN-ReLU) x 2 + max pool, widths 32/64/128, global pool, linear."""
    layers: list[nn.Module] = []
    in_channels = 3
    for width in (32, 64, 128):
        for _ in range(2):
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            in_channels = width
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, NUM_CLASSES)]
    return nn.Sequential(*layers)


def resnet18() -> nn.Module:
    """timm's ResNet-18, randomly initialised, with a 10-class head."""
    return timm.create_model("resnet18", pretrained=False, num_classes=NUM_CLASSES)


def vit_tiny() -> nn.Module:
    """timm's ViT-Tiny on 32x32 inputs with 4x4 patches (64 tokens and a class token), 10-class head."""
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=NUM_CLASSES, img_size=32, patch_size=4
    )


def convnext_atto() -> nn.Module:
    """timm's ConvNeXt-Atto (depthwise 7x7 convolutions, LayerNorm2d, GELU, layer scale), 10-class head."""
    return timm.create_model("convnext_atto", pretrained=False, num_classes=NUM_CLASSES)


CONFIGS: dict[str, Config] = {
    config.name: config
    for config in (
        Config("mlp", mlp, 128, (64,)),
        Config("lenet", lenet, 64, (1, 28, 28)),
        Config("vgg", vgg, 64, (3, 32, 32)),
        Config("resnet18", resnet18, 64, (3, 32, 32)),
        Config("vit_tiny", vit_tiny, 64, (3, 32, 32)),
        Config("convnext_atto", convnext_atto, 64, (3, 32, 32)),
    )
}


@dataclass
class Method:
    """One way of training a copy of the model: its optimizer and its training step."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], object]


def sgd_method(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Method:
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()

    return Method("sgd", model, optimizer, step)


def lfp_method(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Method:
    with warnings.catch_warnings():
        # zero-initialised biases and BatchNorm weights stay zero under LFP; that changes no step's cost
        warnings.simplefilter("ignore", ZeroParameterWarning)
        optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        optimizer.step(inputs, targets)

    return Method("lfp", model, optimizer, step)


def reference_method(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Method:
    """The training step of the ``lfprop`` README (the composite is registered for every step).

    The reward is detached rather than sent through NumPy and back, which only saves time.
    """
    # lfprop is optional, so it is imported only when the reference runs
    from lfprop.propagation.propagator_lxt import LFPEpsilonComposite
    from lfprop.rewards.reward_functions import SoftmaxLossReward as ReferenceSoftmaxLossReward

    # lxt warns on every registration that removing a composite is not fully tested
    warnings.filterwarnings("ignore", message="This functionality is not yet fully tested")
    composite = LFPEpsilonComposite()
    reward_fn = ReferenceSoftmaxLossReward(inputs.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with composite.context(model) as modified:
            leaf_inputs = inputs.detach().requires_grad_(True)
            outputs = modified(leaf_inputs)
            reward = reward_fn(outputs, targets).detach()
            torch.autograd.grad((outputs,), (leaf_inputs,), grad_outputs=(reward,))
        for param in model.parameters():
            feedback = getattr(param, "feedback", None)
            param.grad = None if feedback is None else -feedback
        optimizer.step()

    return Method("reference", model, optimizer, step)


def reference_available() -> bool:
    return importlib.util.find_spec("lfprop") is not None


@dataclass
class Result:
    """Everything measured on one configuration (times in milliseconds, memory in bytes)."""

    config: str
    device: str
    batch_size: int
    input_shape: tuple[int, ...]
    warmup: int
    repeats: int
    times_ms: dict[str, dict[str, list[float]]]
    """clock -> method -> the time of every timed step, in the order they ran."""
    median_ms: dict[str, dict[str, float]]
    """clock -> method -> median step time."""
    ratio_to_sgd: dict[str, dict[str, float]]
    """clock -> method -> median over repetitions of (its step time / SGD's in the same repetition)."""
    state_bytes: dict[str, int]
    """method -> bytes of parameters, buffers and optimizer state (the same for SGD and LFP)."""
    step_peak_bytes: dict[str, int]
    """method -> most bytes alive at once during one step, above its state."""
    peak_bytes: dict[str, int]
    """method -> state + step peak."""
    skipped: dict[str, str]
    """method -> why it could not run this model (only the reference may be skipped)."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Run ``step()`` once; its wall time and, on CPU, the CPU time of this thread, in milliseconds."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.thread_time()
    step()
    synchronize(device)
    elapsed = {"wall": (time.perf_counter() - wall) * 1e3}
    if device.type == "cpu":
        elapsed["cpu"] = (time.thread_time() - cpu) * 1e3
    return elapsed


def build_methods(
    config: Config, device: torch.device, with_reference: bool, warmup: int
) -> tuple[list[Method], dict[str, str], float]:
    """Identical copies of the model for every method, each warmed up.

    Returns:
        the methods that ran, why the others were skipped, and the seconds one step of every
        method took in the last warm-up round (CPU time on CPU).
    """
    torch.manual_seed(0)
    model = config.build().to(device).train()
    inputs = torch.randn(config.batch_size, *config.input_shape, device=device)
    targets = torch.randint(0, NUM_CLASSES, (config.batch_size,), device=device)
    factories = [sgd_method, lfp_method]
    if with_reference:
        factories.append(reference_method)
    methods, skipped = [], {}
    seconds_per_round = 0.0
    clock = "cpu" if device.type == "cpu" else "wall"
    for factory in factories:
        method = factory(copy.deepcopy(model), inputs, targets)
        try:
            elapsed = [time_step(method.step, device)[clock] for _ in range(warmup)]
        except Exception as error:  # the reference does not support every model
            if method.name != "reference":
                raise
            skipped[method.name] = f"{type(error).__name__}: {error}"
            continue
        methods.append(method)
        seconds_per_round += elapsed[-1] / 1e3
    return methods, skipped, seconds_per_round


def run_config(config: Config, device: torch.device, repeats: int | None, warmup: int, with_reference: bool) -> Result:
    methods, skipped, seconds_per_round = build_methods(config, device, with_reference, warmup)
    if repeats is None:
        repeats = min(MAX_REPEATS, max(MIN_REPEATS, math.ceil(TIME_BUDGET_S / seconds_per_round)))
    clocks = CLOCKS if device.type == "cpu" else ("wall",)
    times_ms = {clock: {method.name: [] for method in methods} for clock in clocks}
    gc.collect()
    for repetition in range(repeats):
        first = repetition % len(methods)
        for method in methods[first:] + methods[:first]:
            for clock, elapsed in time_step(method.step, device).items():
                times_ms[clock][method.name].append(elapsed)

    # SGD and LFP only: the reference keeps the last step's feedback alive on every parameter.
    step_peak = {
        method.name: step_peak_bytes(method.step, lambda optimizer=method.optimizer: optimizer.zero_grad(), device)
        for method in methods[:2]
    }
    state = {method.name: state_bytes(method.model, method.optimizer) for method in methods[:2]}
    return Result(
        config=config.name,
        device=str(device),
        batch_size=config.batch_size,
        input_shape=config.input_shape,
        warmup=warmup,
        repeats=repeats,
        times_ms=times_ms,
        median_ms={
            clock: {name: statistics.median(times) for name, times in by_method.items()}
            for clock, by_method in times_ms.items()
        },
        ratio_to_sgd={
            clock: {
                name: statistics.median([time / sgd for time, sgd in zip(times, by_method["sgd"], strict=True)])
                for name, times in by_method.items()
            }
            for clock, by_method in times_ms.items()
        },
        state_bytes=state,
        step_peak_bytes=step_peak,
        peak_bytes={name: state[name] + peak for name, peak in step_peak.items()},
        skipped=skipped,
    )


def format_table(results: list[Result], clock: str, with_reference: bool) -> str:
    """One row per configuration: median times on ``clock`` and peak memory, with LFP/SGD ratios."""
    header = ["config", "reps", "SGD ms", "LFP ms", "LFP/SGD"]
    if with_reference:
        header += ["ref ms", "ref/SGD"]
    header += ["state MiB", "SGD peak", "LFP peak", "LFP/SGD", "SGD step", "LFP step", "LFP/SGD"]
    rows = [header]
    for result in results:
        median, ratio = result.median_ms[clock], result.ratio_to_sgd[clock]
        row = [
            result.config,
            str(result.repeats),
            f"{median['sgd']:.1f}",
            f"{median['lfp']:.1f}",
            f"{ratio['lfp']:.2f}",
        ]
        if with_reference:
            if "reference" in median:
                row += [f"{median['reference']:.1f}", f"{ratio['reference']:.2f}"]
            else:
                row += ["n/a", "n/a"]
        peak, step_peak = result.peak_bytes, result.step_peak_bytes
        row += [
            f"{result.state_bytes['sgd'] / MIB:.2f}",
            f"{peak['sgd'] / MIB:.2f}",
            f"{peak['lfp'] / MIB:.2f}",
            f"{peak['lfp'] / peak['sgd']:.2f}",
            f"{step_peak['sgd'] / MIB:.2f}",
            f"{step_peak['lfp'] / MIB:.2f}",
            f"{step_peak['lfp'] / step_peak['sgd']:.2f}",
        ]
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated, out of {','.join(CONFIGS)} (default: all)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help=f"timed steps per method (default: ~{TIME_BUDGET_S:.0f} s worth, {MIN_REPEATS} to {MAX_REPEATS})",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first, at least 1 (default: 2)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda (default: cuda if any)"
    )
    parser.add_argument(
        "--clock", choices=CLOCKS, help="clock of the table: cpu (this thread's CPU time, the default on CPU) or wall"
    )
    parser.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    args = parser.parse_args(argv)
    args.configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in args.configs if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.warmup < 1:  # the first step creates the momentum buffers; it also sizes --repeats
        parser.error(f"--warmup must be at least 1, got {args.warmup}")
    args.device = torch.device(args.device)
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    if args.clock is None:
        args.clock = "cpu" if args.device.type == "cpu" else "wall"
    if args.clock == "cpu" and args.device.type != "cpu":
        parser.error("--clock cpu measures CPU work only; use --clock wall with --device cuda")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    with_reference = reference_available()
    results = []
    for name in args.configs:
        result = run_config(CONFIGS[name], args.device, args.repeats, args.warmup, with_reference)
        for method, reason in result.skipped.items():
            print(f"{name}: {method} skipped ({reason})", file=sys.stderr)
        results.append(result)
    where = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU, 1 thread"
    clock = "CPU time of the stepping thread" if args.clock == "cpu" else "wall time"
    print(f"torch {torch.__version__}, {where}; median {clock} per step after {args.warmup} warm-up steps")
    print(format_table(results, args.clock, with_reference))
    print("time ratios: median over repetitions of (time / SGD's time in the same repetition)")
    print("memory in MiB: state = parameters + buffers + momentum; step = most bytes alive at once above it")
    if not with_reference:
        print("(no reference column: the package lfprop is not importable)")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=2))


if __name__ == "__main__":
    main()
