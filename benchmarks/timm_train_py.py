"""timm's own ``train.py``, unchanged but for one line, with SGD and with LFP on the digits.

The project does not ship timm's training script: point ``--train-py`` at ``train.py`` from a
checkout of https://github.com/huggingface/pytorch-image-models (the version matching the
installed timm). The script

1. writes scikit-learn's digits as an ImageFolder (``train/`` and ``validation/``, one folder per
   class, 32x32 RGB PNGs upsampled from 8x8; the 80/20 split of the examples);
2. runs ``train.py`` with the same flags twice: as it is (SGD), and as a copy with one line added
   right after timm builds the optimizer::

       optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
       optimizer = lfpoptim.DropInLFPOptimizer(model, base=optimizer)   # the added line

3. reads the best top-1 accuracy from each run's ``summary.csv`` and prints the table.

Everything else is ``train.py``'s defaults (augmentation, label smoothing 0.1, warm-up, weight
decay) plus the flags in ``FLAGS``.

    python benchmarks/timm_train_py.py --train-py ~/pytorch-image-models/train.py
    python benchmarks/timm_train_py.py --train-py train.py --epochs 2 --model resnet18   # a quick check
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # the digits helpers of the examples

from _digits import load_digit_images

ANCHOR = re.compile(r"^(\s*)optimizer = create_optimizer_v2\(\n(?:.*\n)*?\1\)\n", re.MULTILINE)
"""The statement in ``train.py`` that builds the optimizer (the LFP line goes right after it)."""

FLAGS = ["--input-size", "3", "32", "32", "--opt", "sgd", "--momentum", "0.9", "--sched", "cosine", "--device", "cpu"]
FLAGS += ["--no-prefetcher", "--workers", "0", "--log-interval", "1000", "--checkpoint-hist", "1"]


def write_image_folder(root: Path, image_size: int = 32) -> None:
    """The digits as ``root/{train,validation}/<class>/<index>.png``, RGB, ``image_size`` pixels."""
    data = load_digit_images(image_size)
    splits = {"train": (data.train_inputs, data.train_targets), "validation": (data.test_inputs, data.test_targets)}
    for split, (images, targets) in splits.items():
        pixels = ((images.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
        for index, (image, target) in enumerate(zip(pixels, targets.tolist(), strict=True)):
            folder = root / split / str(target)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index}.png")


def with_lfp_line(train_py: Path, destination: Path, options: str = "") -> Path:
    """A copy of ``train_py`` with the one LFP line after the optimizer is built (``options``: more arguments)."""
    source = train_py.read_text()
    match = ANCHOR.search(source)
    if match is None:
        raise SystemExit(f"{train_py}: no 'optimizer = create_optimizer_v2(...)' statement found")
    indent = match.group(1)
    arguments = ", ".join(filter(None, ["model", "base=optimizer", options]))
    line = f"{indent}import lfpoptim\n{indent}optimizer = lfpoptim.DropInLFPOptimizer({arguments})\n"
    patched = destination / "train_lfp.py"
    patched.write_text(source[: match.end()] + line + source[match.end() :])
    return patched


def best_top1(output: Path) -> tuple[float, float]:
    """(best, last) ``eval_top1`` in the run's ``summary.csv``."""
    [summary] = output.rglob("summary.csv")
    with summary.open() as file:
        rows = list(csv.DictReader(file))
    top1 = [float(row["eval_top1"]) for row in rows]
    return max(top1), top1[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-py", type=Path, required=True, help="timm's train.py")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (OMP_NUM_THREADS)")
    parser.add_argument("--lfp-options", default="", help="more DropInLFPOptimizer arguments, as Python source")
    parser.add_argument("--only", choices=["SGD", "LFP"], help="run one of the two")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="timm_train_py_"))
    write_image_folder(work / "digits")
    scripts = {"SGD": args.train_py.resolve(), "LFP": with_lfp_line(args.train_py, work, args.lfp_options)}
    if args.only:
        scripts = {args.only: scripts[args.only]}
    flags = [str(work / "digits"), "--model", args.model, "--num-classes", "10", *FLAGS]
    flags += ["--epochs", str(args.epochs), "--lr", str(args.lr), "-b", str(args.batch_size), "--seed", str(args.seed)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    print(f"python train.py {' '.join(flags[:1])} {' '.join(flags[1:])}  (with --output per run)")
    results = {}
    for name, script in scripts.items():
        output = work / name
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, str(script), *flags, "--output", str(output)],
            check=True,
            env=environment,
            cwd=args.train_py.resolve().parent,
            stdout=subprocess.DEVNULL,
        )
        results[name] = (*best_top1(output), time.perf_counter() - started)
    print(f"{'optimizer':10s} {'best top-1':>10s} {'last top-1':>10s} {'minutes':>8s}")
    for name, (best, last, seconds) in results.items():
        print(f"{name:10s} {best:10.1f} {last:10.1f} {seconds / 60:8.1f}")


if __name__ == "__main__":
    main()
