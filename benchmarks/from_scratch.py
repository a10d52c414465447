"""timm models from scratch on the digits: LFP with the library's defaults against SGD, same everything else.

For every model and seed, one freshly initialised model is copied and trained twice
(``benchmarks/compare.py``): SGD on cross-entropy, and ``LFPOptimizer(model, SoftmaxLossReward(),
lr=LR, momentum=0.9)`` with every other argument at its default. Same start, same batches (64),
same cosine schedule over the epochs, same learning rate. The digits are upsampled to 32x32 RGB.

Each (model, seed) run is written to ``--out/<model>-<seed>.json`` as soon as it ends, so runs can
be split over processes (``--models``, ``--seeds``) and resumed; ``--report`` prints the table
(mean ± spread over seeds of the final test accuracy, and images/s) and writes the plot.

    python benchmarks/from_scratch.py                                   # all models, 3 seeds, 10 epochs
    python benchmarks/from_scratch.py --models resnet18 --seeds 0       # one run
    python benchmarks/from_scratch.py --report --plot docs/plots/from_scratch.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
from compare import METHODS, load_digit_images, run_missing, save_figure, saved_runs_arguments, train_both

MODELS: dict[str, dict[str, object]] = {
    "resnet18": {},
    "resnet50": {},
    "convnext_atto": {},
    "vit_tiny_patch16_224": {"img_size": 32, "patch_size": 4},
    "efficientnet_b0": {},
    "mobilenetv3_small_100": {},
}
"""The models and the ``timm.create_model`` arguments each needs for 32x32 inputs."""

LR = 0.05
EPOCHS = 10
BATCH_SIZE = 64


def run(model_name: str, seed: int, epochs: int, out: Path) -> None:
    """Train ``model_name`` with both methods from the seed's start and save both runs."""
    data = load_digit_images(32)
    runs = train_both(
        lambda: timm.create_model(model_name, num_classes=10, **MODELS[model_name]),
        data,
        lr=LR,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        seed=seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": model_name, "seed": seed, "epochs": epochs, "lr": LR, "threads": torch.get_num_threads()}
    record["runs"] = {method: asdict(result) for method, result in runs.items()}
    (out / f"{model_name}-{seed}.json").write_text(json.dumps(record, indent=1))
    summary = (f"{m.upper()} {runs[m].final:.3f} ({runs[m].images_per_second:.0f} img/s)" for m in METHODS)
    print(f"{model_name} seed {seed}: " + "  ".join(summary), flush=True)


def report(out: Path, plot: Path | None) -> None:
    """The table of final accuracies (mean and range over seeds) and throughput, and the plot."""
    records: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*.json")):
        record = json.loads(path.read_text())
        records.setdefault(record["model"], []).append(record)
    print("| model | seeds | SGD | LFP | LFP - SGD | SGD img/s | LFP img/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model_name in MODELS:
        if model_name not in records:
            continue
        found = records[model_name]
        final = {method: [r["runs"][method]["accuracies"][-1] for r in found] for method in METHODS}
        speed = {method: statistics.mean(r["runs"][method]["images_per_second"] for r in found) for method in METHODS}
        cells = [f"{statistics.mean(final[m]):.3f} ({min(final[m]):.3f}-{max(final[m]):.3f})" for m in METHODS]
        gap = 100 * (statistics.mean(final["lfp"]) - statistics.mean(final["sgd"]))
        print(
            f"| {model_name} | {len(found)} | {cells[0]} | {cells[1]} | {gap:+.1f} pt "
            f"| {speed['sgd']:.0f} | {speed['lfp']:.0f} |"
        )
    if plot is not None:
        draw(records, plot)


def draw(records: dict[str, list[dict]], plot: Path) -> None:
    """Mean test accuracy per epoch, SGD and LFP, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in MODELS if name in records]
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), sharey=True, squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        for method, color in (("sgd", "tab:orange"), ("lfp", "tab:blue")):
            curves = torch.tensor([r["runs"][method]["accuracies"] for r in records[name]])
            epochs = range(1, curves.shape[1] + 1)
            axis.plot(epochs, curves.mean(0), color=color, label=method.upper())
            axis.fill_between(epochs, curves.min(0).values, curves.max(0).values, color=color, alpha=0.2)
        axis.set_title(name.replace("_patch16_224", ""), fontsize=9)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][0].legend(loc="lower right")
    save_figure(figure, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    saved_runs_arguments(parser, seeds="0,1,2", out=Path("outputs/from_scratch"))
    args = parser.parse_args()
    if args.report:
        report(args.out, args.plot)
        return
    torch.set_num_threads(args.threads)
    run_missing(args.out, args.seeds, args.models.split(","), lambda name, seed: run(name, seed, args.epochs, args.out))


if __name__ == "__main__":
    main()
