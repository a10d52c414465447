"""Learning-rate sweep: does LFP with the library's defaults train wherever SGD does?

For each model and learning rate, one freshly initialised model is trained from the same start on
the same batches with the same cosine schedule (``benchmarks/compare.py``) by

* **SGD** on cross-entropy, momentum 0.9;
* **LFP** with the defaults (``feedback_reduction="grad_norm"``), momentum 0.9;
* **LFP normalized**: ``feedback_reduction="normalized"``, the default before 0.2.0, for comparison.

Models: the digits MLP 64-256-256-10, a LeNet-style CNN with BatchNorm and dropout (both on 8x8
digits), and two timm models on digits upsampled to 32x32. The table gives the final test
accuracy per learning rate; the summary compares each method's best with SGD's best and reports
LFP at SGD's best learning rate. Results are saved per (model, seed) in ``--out`` as they finish.

    python benchmarks/lr_sweep.py                                     # everything, seed 0
    python benchmarks/lr_sweep.py --models mlp,lenet_bn --seeds 0,1,2
    python benchmarks/lr_sweep.py --report --plot docs/plots/lr_sweep.png
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
from compare import (
    Digits,
    load_digit_images,
    load_digits_split,
    make_lenet_bn,
    make_mlp,
    run_missing,
    save_figure,
    saved_runs_arguments,
    train,
)
from torch import nn


@dataclass(frozen=True)
class Config:
    """One model of the sweep: how to build it, its data, and its epochs and learning rates."""

    build: Callable[[], nn.Module]
    data: Callable[[], Digits]
    epochs: int
    learning_rates: tuple[float, ...]


FULL = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
COARSE = (0.01, 0.05, 0.2, 0.5)
CONFIGS: dict[str, Config] = {
    "mlp": Config(make_mlp, load_digits_split, 10, FULL),
    "lenet_bn": Config(make_lenet_bn, lambda: load_digits_split((1, 8, 8)), 10, FULL),
    "resnet18": Config(lambda: timm.create_model("resnet18", num_classes=10), lambda: load_digit_images(32), 5, COARSE),
    "mobilenetv3_small_100": Config(
        lambda: timm.create_model("mobilenetv3_small_100", num_classes=10), lambda: load_digit_images(32), 5, COARSE
    ),
}
METHODS: dict[str, dict[str, str] | None] = {
    "SGD": None,
    "LFP": {},
    "LFP normalized": {"feedback_reduction": "normalized"},
}
BATCH_SIZE = 64


def sweep(name: str, seed: int, methods: list[str], out: Path) -> None:
    """Train ``name`` at every learning rate with each of ``methods`` from the seed's start; save the accuracies."""
    config = CONFIGS[name]
    data = config.data()
    torch.manual_seed(seed)
    start = config.build()
    results: dict[str, dict[str, float]] = {method: {} for method in methods}
    for lr in config.learning_rates:
        for method in methods:
            options = METHODS[method]
            run = train(
                copy.deepcopy(start),
                "sgd" if options is None else "lfp",
                data,
                lr=lr,
                epochs=config.epochs,
                batch_size=BATCH_SIZE,
                seed=seed,
                lfp_options=options,
            )
            results[method][str(lr)] = run.final
        summary = "  ".join(f"{method} {accuracies[str(lr)]:.3f}" for method, accuracies in results.items())
        print(f"{name} seed {seed} lr {lr}: {summary}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": name, "seed": seed, "epochs": config.epochs, "results": results}
    (out / f"{name}-{seed}.json").write_text(json.dumps(record, indent=1))


def report(out: Path, plot: Path | None) -> None:
    """The accuracy table and the best-vs-best summary, averaged over the saved seeds."""
    by_model: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*.json")):
        record = json.loads(path.read_text())
        by_model.setdefault(record["model"], []).append(record)
    means: dict[str, dict[str, dict[float, float]]] = {}
    for name in (name for name in CONFIGS if name in by_model):
        records = by_model[name]
        means[name] = {
            method: {
                float(lr): statistics.mean(r["results"][method][lr] for r in records)
                for lr in records[0]["results"][method]
            }
            for method in METHODS
            if method in records[0]["results"]
        }
        rates = sorted(means[name]["SGD"])
        print(f"\n**{name}** ({len(records)} seed(s), {records[0]['epochs']} epochs): final test accuracy\n")
        print("| method | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | best |")
        print("|---|" + "---:|" * (len(rates) + 1))
        for method, accuracies in means[name].items():
            cells = " | ".join(f"{accuracies[lr]:.3f}" for lr in rates)
            print(f"| {method} | {cells} | {max(accuracies.values()):.3f} |")
        print()
        sgd = means[name]["SGD"]
        sgd_best_lr = max(sgd, key=sgd.get)
        for method in (method for method in ("LFP", "LFP normalized") if method in means[name]):
            gap = 100 * (max(means[name][method].values()) - max(sgd.values()))
            at = means[name][method][sgd_best_lr]
            print(f"- {method}: best {gap:+.1f} pt against SGD's best; {at:.3f} at SGD's best lr {sgd_best_lr:g}")
    if plot is not None:
        draw(means, plot)


def draw(means: dict[str, dict[str, dict[float, float]]], plot: Path) -> None:
    """Final test accuracy against the learning rate, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"SGD": ("tab:orange", "o"), "LFP": ("tab:blue", "s"), "LFP normalized": ("tab:gray", "^")}
    figure, axes = plt.subplots(1, len(means), figsize=(3.3 * len(means), 3.0), sharey=True, squeeze=False)
    for axis, (name, methods) in zip(axes[0], means.items(), strict=True):
        for method, accuracies in methods.items():
            rates = sorted(accuracies)
            color, marker = styles[method]
            axis.plot(rates, [accuracies[lr] for lr in rates], color=color, marker=marker, label=method)
        axis.set_xscale("log")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("learning rate")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("final test accuracy")
    axes[0][0].legend(loc="lower left", fontsize=8)
    save_figure(figure, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CONFIGS), help="comma-separated, from: " + ", ".join(CONFIGS))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    saved_runs_arguments(parser, seeds="0", out=Path("outputs/lr_sweep"))
    args = parser.parse_args()
    if args.report:
        report(args.out, args.plot)
        return
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    run_missing(args.out, args.seeds, args.models.split(","), lambda name, seed: sweep(name, seed, methods, args.out))


if __name__ == "__main__":
    main()
