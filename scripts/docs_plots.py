"""Generate the plots of the documentation site; they are committed under ``docs/plots/``.

Each command writes one PNG and prints the Markdown table that goes next to it in
``docs/benchmarks.md`` (copied by hand, so that the page states numbers a reader can regenerate).

    python scripts/docs_plots.py all          # everything below, about 9 minutes on 2 CPU cores
    python scripts/docs_plots.py digits       # digits_learning_curves.png: LFP vs SGD, 3 seeds x 30 epochs
    python scripts/docs_plots.py step-time    # runs benchmarks/step_time.py --json, then step_time.png
    python scripts/docs_plots.py step-time --from-json docs/plots/step_time_cpu.json   # redraw only
    python scripts/docs_plots.py sparsity     # feedback_sparsity.png: update sparsity and weight Gini
    python scripts/docs_plots.py feedback     # feedback_curves.png: benchmarks/feedback.py, LFP vs REINFORCE
    python scripts/docs_plots.py human-feedback   # human_feedback_oracle.png: examples/human_feedback.py, oracle
    python scripts/docs_plots.py all --smoke --out /tmp/plots   # tiny runs: checks that everything works
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import matplotlib

matplotlib.use("Agg")  # write PNG files, never open a window

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lfpoptim import LFPOptimizer, SoftmaxLossReward
from lfpoptim.analysis import SparsityTracker

ROOT = Path(__file__).resolve().parent.parent
PLOTS = ROOT / "docs" / "plots"
STEP_TIME_TARGET = 1.2
"""The library's target for LFP's step time relative to SGD's (benchmarks/README.md)."""
MEMORY_TARGET = 1.1
"""The library's target for LFP's peak memory relative to SGD's."""


def load_script(path: str) -> ModuleType:
    """Import a repository script (``benchmarks/x.py``, ``examples/x.py``) as a module, to call its ``main``."""
    if str(ROOT / "examples") not in sys.path:
        sys.path.insert(0, str(ROOT / "examples"))  # the scripts import examples/_digits.py
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path} not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is being made
    spec.loader.exec_module(module)
    return module


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (``examples/`` is not a package)."""
    return load_script(f"examples/{name}.py")


def digits_learning_curves(out: Path, smoke: bool) -> Path:
    """Test accuracy per epoch of LFP and SGD on digits, with ``examples/train_digits.py``'s own code."""
    train_digits = load_example("train_digits")
    seeds, epochs = (1, 2) if smoke else (3, 30)
    data = train_digits.load_digits_split()
    with tqdm(total=seeds * epochs, desc="digits", unit="epoch", disable=True) as progress:
        curves = [train_digits.train_one_seed(data, seed, epochs, progress) for seed in range(seeds)]
    path = out / "digits_learning_curves.png"
    train_digits.plot(curves, path)

    lfp = np.array([c.lfp for c in curves])
    sgd = np.array([c.sgd for c in curves])
    print(f"\nTest accuracy, mean over {seeds} seed(s) (min-max)\n")
    print("| epoch | LFP | SGD |\n|---:|---:|---:|")
    for epoch in sorted({1, 2, 5, 10, 20, epochs} & set(range(1, epochs + 1))):
        cells = [
            f"{runs[:, epoch - 1].mean():.3f} ({runs[:, epoch - 1].min():.3f}-{runs[:, epoch - 1].max():.3f})"
            for runs in (lfp, sgd)
        ]
        print(f"| {epoch} | " + " | ".join(cells) + " |")
    return path


def run_step_time_benchmark(json_path: Path, smoke: bool) -> None:
    """Run ``benchmarks/step_time.py`` (all configurations, or a tiny MLP run when ``smoke``)."""
    command = [sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--json", str(json_path)]
    if smoke:
        command += ["--configs", "mlp", "--repeats", "3", "--warmup", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, cwd=ROOT)


def step_time_plot(out: Path, from_json: Path | None, smoke: bool) -> Path:
    """LFP/SGD step-time ratios per repetition (box plot) and peak-memory ratios per configuration."""
    json_path = from_json
    if json_path is None:
        json_path = out / "step_time_cpu.json"
        run_step_time_benchmark(json_path, smoke)
    results: list[dict[str, Any]] = json.loads(json_path.read_text())
    clock = "cpu" if "cpu" in results[0]["times_ms"] else "wall"
    names = [result["config"] for result in results]
    ratios = [
        np.array(result["times_ms"][clock]["lfp"]) / np.array(result["times_ms"][clock]["sgd"]) for result in results
    ]

    figure, (time_axes, memory_axes) = plt.subplots(1, 2, figsize=(11, 4))
    time_axes.boxplot(ratios, showfliers=False)
    time_axes.set_xticks(range(1, len(names) + 1), names, rotation=20)
    time_axes.axhline(1.0, color="gray", linewidth=0.8)
    time_axes.axhline(STEP_TIME_TARGET, color="tab:red", linestyle="--", linewidth=1, label="target 1.2")
    time_axes.set_ylabel("LFP step time / SGD step time")
    time_axes.set_title(f"Step time ({clock} clock), per repetition")
    time_axes.legend(loc="upper right")

    positions = np.arange(len(names))
    peak = [result["peak_bytes"]["lfp"] / result["peak_bytes"]["sgd"] for result in results]
    step = [result["step_peak_bytes"]["lfp"] / result["step_peak_bytes"]["sgd"] for result in results]
    memory_axes.bar(positions - 0.2, peak, width=0.4, label="peak (state + step)")
    memory_axes.bar(positions + 0.2, step, width=0.4, label="step only")
    memory_axes.set_xticks(positions, names, rotation=20)
    memory_axes.axhline(MEMORY_TARGET, color="tab:red", linestyle="--", linewidth=1, label="target 1.1")
    memory_axes.set_ylim(0.8, max([*peak, *step, MEMORY_TARGET]) + 0.15)
    memory_axes.set_ylabel("LFP memory / SGD memory")
    memory_axes.set_title("Peak memory of one step")
    memory_axes.legend(loc="upper right")
    figure.suptitle(f"LFPOptimizer against SGD on the same model and batch ({results[0]['device']})")
    path = out / "step_time.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)

    mib = 2**20
    repeats = ", ".join(f"{result['config']} {result['repeats']}" for result in results)
    print(f"\nMedian {clock} time per step; ratios: median over repetitions ({repeats}); peak memory in MiB\n")
    print("| config | SGD ms | LFP ms | time ratio | SGD MiB | LFP MiB | memory ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for result, memory_ratio in zip(results, peak, strict=True):
        median = result["median_ms"][clock]
        print(
            f"| {result['config']} | {median['sgd']:.1f} | {median['lfp']:.1f} | "
            f"{result['ratio_to_sgd'][clock]['lfp']:.2f} | {result['peak_bytes']['sgd'] / mib:.2f} | "
            f"{result['peak_bytes']['lfp'] / mib:.2f} | {memory_ratio:.2f} |"
        )
    return path


def feedback_sparsity(out: Path, smoke: bool) -> Path:
    """Update sparsity and weight Gini index while training the digits MLP with LFP and with SGD."""
    train_digits = load_example("train_digits")
    epochs = 1 if smoke else 30
    data = train_digits.load_digits_split()
    torch.manual_seed(0)
    lfp_model = train_digits.make_mlp()
    sgd_model = copy.deepcopy(lfp_model)
    lfp_optimizer = LFPOptimizer(lfp_model, SoftmaxLossReward(), lr=0.1, momentum=0.9)
    sgd_optimizer = torch.optim.SGD(sgd_model.parameters(), lr=0.1, momentum=0.9)
    trackers = {"LFP": SparsityTracker(lfp_model, track_gini=True), "SGD": SparsityTracker(sgd_model, track_gini=True)}
    batch_order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(data.train_targets), generator=batch_order).split(train_digits.BATCH_SIZE):
            inputs, targets = data.train_inputs[batch], data.train_targets[batch]
            lfp_optimizer.step(inputs, targets)
            trackers["LFP"].update()
            sgd_optimizer.zero_grad()
            F.cross_entropy(sgd_model(inputs), targets).backward()
            sgd_optimizer.step()
            trackers["SGD"].update()

    weights = [name for name, param in lfp_model.named_parameters() if param.dim() > 1]
    steps_per_epoch = len(trackers["LFP"].records) // epochs
    figure, (update_axes, gini_axes) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    colors = dict(zip(weights, ("tab:blue", "tab:orange", "tab:green"), strict=False))
    epoch_numbers = np.arange(1, epochs + 1)
    for optimizer, style in (("LFP", "-"), ("SGD", ":")):
        records = trackers[optimizer].records
        for name in weights:
            label = f"{optimizer} {name}"
            # every epoch ends with a smaller batch (fewer samples, more silent units): average over the epoch
            per_step = np.array([record.update_sparsity[name] for record in records]).reshape(epochs, steps_per_epoch)
            update_axes.plot(epoch_numbers, per_step.mean(axis=1), style, color=colors[name], label=label)
            at_epoch_end = [records[(epoch + 1) * steps_per_epoch - 1].weight_gini[name] for epoch in range(epochs)]
            gini_axes.plot(epoch_numbers, at_epoch_end, style, color=colors[name], label=label)
    update_axes.set_ylabel("fraction of exact zeros in the update")
    update_axes.set_title("Update sparsity (.grad after each step), epoch mean")
    gini_axes.set_ylabel("Gini index of |weights|")
    gini_axes.set_title("Weight concentration at the end of each epoch")
    for axes in (update_axes, gini_axes):
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
    gini_axes.legend(fontsize="small", ncol=2, loc="center right")
    figure.suptitle("Digits MLP 64-256-256-10, LFP (solid) and SGD (dotted), same start and batches")
    path = out / "feedback_sparsity.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)

    print("\nWeight matrices: mean update sparsity over all steps, weight Gini index at the end\n")
    print("| parameter | LFP update sparsity | SGD update sparsity | LFP weight Gini | SGD weight Gini |")
    print("|---|---:|---:|---:|---:|")
    means = {optimizer: tracker.mean_update_sparsity() for optimizer, tracker in trackers.items()}
    for name in weights:
        ginis = [trackers[optimizer].records[-1].weight_gini[name] for optimizer in ("LFP", "SGD")]
        print(f"| {name} | {means['LFP'][name]:.3f} | {means['SGD'][name]:.3f} | {ginis[0]:.3f} | {ginis[1]:.3f} |")
    return path


def feedback_curves(out: Path, smoke: bool) -> Path:
    """Accuracy against judged samples, LFP's feedback rewards against REINFORCE (``benchmarks/feedback.py``)."""
    path = out / "feedback_curves.png"
    load_script("benchmarks/feedback.py").main(["--plot", str(path), *(["--smoke"] if smoke else [])])
    return path


def human_feedback_oracle(out: Path, smoke: bool) -> Path:
    """Held-out accuracy against answers of ``examples/human_feedback.py`` with ``--judge oracle``."""
    path = out / "human_feedback_oracle.png"
    state = out / "human_feedback_oracle.pt"
    answers = "64" if smoke else "2000"
    argv = sys.argv
    try:  # the example reads its options from sys.argv, as when run from the command line
        sys.argv = ["human_feedback.py", "--judge", "oracle", "--digits", answers, "--fresh"]
        sys.argv += ["--state", str(state), "--plot", str(path)]
        load_script("examples/human_feedback.py").main()
    finally:
        sys.argv = argv
    state.unlink()
    return path


def main(argv: list[str] | None = None) -> None:
    """Make the plots named on the command line (``argv``; ``sys.argv`` when ``None``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    plots = ("all", "digits", "step-time", "sparsity", "feedback", "human-feedback")
    parser.add_argument("plot", choices=plots, help="which plot to make")
    parser.add_argument("--out", type=Path, default=PLOTS, help=f"output folder (default: {PLOTS.relative_to(ROOT)})")
    parser.add_argument("--from-json", type=Path, help="step-time: plot this benchmark JSON instead of running it")
    parser.add_argument("--smoke", action="store_true", help="tiny runs, to check that everything works")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # small models: one thread is as fast, and runs repeat exactly

    made = []
    if args.plot in ("all", "digits"):
        made.append(digits_learning_curves(args.out, args.smoke))
    if args.plot in ("all", "step-time"):
        made.append(step_time_plot(args.out, args.from_json, args.smoke))
    if args.plot in ("all", "sparsity"):
        made.append(feedback_sparsity(args.out, args.smoke))
    if args.plot in ("all", "feedback"):
        made.append(feedback_curves(args.out, args.smoke))
    if args.plot in ("all", "human-feedback"):
        made.append(human_feedback_oracle(args.out, args.smoke))
    print("\nwrote " + ", ".join(str(path) for path in made))


if __name__ == "__main__":
    main()
