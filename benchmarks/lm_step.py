"""Step time, tokens per second and peak memory of LFP against AdamW on small causal language models.

The models are those of ``examples/language_model.py`` (a GPT-2-style and a Llama-style character
model built from their configs), at a size given on the command line. One step of each method on
the same fixed batch of token ids:

- AdamW: ``zero_grad()``, ``model(input_ids=x).logits``, ``F.cross_entropy``, ``backward()``, ``step()``;
- LFP: ``zero_grad()``, ``LFPOptimizer(model, SoftmaxLossReward(), base=torch.optim.AdamW).step({"input_ids": x}, t)``.

Repetitions are interleaved (the method that goes first alternates) and the table shows medians;
peak memory is measured as in ``benchmarks/memory.py`` (state, plus the step's own peak above it).

    python benchmarks/lm_step.py                                  # both models, width 64, 2 layers, batch 32 x 64, CPU
    python benchmarks/lm_step.py --width 256 --layers 4 --device cuda --json lm_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch
import torch.nn.functional as F
from memory import state_bytes, step_peak_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from language_model import build

from lfpoptim import LFPOptimizer, SoftmaxLossReward

VOCABULARY = 103
"""The character vocabulary of the example's corpus."""


def methods(
    family: str, args: argparse.Namespace, device: torch.device
) -> dict[str, tuple[Callable[[], object], torch.optim.Optimizer, torch.nn.Module]]:
    sizes = {"vocabulary": VOCABULARY, "width": args.width, "layers": args.layers, "length": args.length, "seed": 0}
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCABULARY, (args.batch, args.length), generator=generator).to(device)
    t = torch.randint(0, VOCABULARY, (args.batch, args.length), generator=generator).to(device)
    adamw_model = build(family, **sizes).to(device)
    adamw = torch.optim.AdamW(adamw_model.parameters(), lr=1e-4)

    def adamw_step() -> None:
        adamw.zero_grad(set_to_none=True)
        F.cross_entropy(adamw_model(input_ids=x).logits.flatten(0, 1), t.flatten()).backward()
        adamw.step()

    lfp_model = build(family, **sizes).to(device)
    lfp = LFPOptimizer(lfp_model, SoftmaxLossReward(), base=torch.optim.AdamW, lr=1e-4, strict=True)

    def lfp_step() -> None:
        lfp.zero_grad(set_to_none=True)
        lfp.step({"input_ids": x}, t)

    return {"AdamW": (adamw_step, adamw, adamw_model), "LFP": (lfp_step, lfp, lfp_model)}


def timed(step: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began


def run(family: str, args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, float]]:
    steps = methods(family, args, device)
    for step, _, _ in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for repeat in range(args.repeats):
        for name in names[repeat % 2 :] + names[: repeat % 2]:
            times[name].append(timed(steps[name][0], device))
    result = {}
    tokens = args.batch * args.length
    for name, (step, optimizer, model) in steps.items():
        median = statistics.median(times[name])
        peak = step_peak_bytes(step, lambda optimizer=optimizer: optimizer.zero_grad(set_to_none=True), device)
        result[name] = {
            "ms_per_step": median * 1e3,
            "tokens_per_second": tokens / median,
            "state_mib": state_bytes(model, optimizer) / 2**20,
            "step_peak_mib": peak / 2**20,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="gpt2,llama")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {family: run(family, args, device) for family in args.models.split(",")}
    print(f"{args.device}, width {args.width}, {args.layers} layers, batch {args.batch} x {args.length} tokens")
    print(f"{'model':6s} {'method':6s} {'ms/step':>8s} {'tokens/s':>9s} {'state MiB':>9s} {'peak MiB':>9s}  time ratio")
    for family, by_method in results.items():
        for name, row in by_method.items():
            ratio = row["ms_per_step"] / by_method["AdamW"]["ms_per_step"]
            print(
                f"{family:6s} {name:6s} {row['ms_per_step']:8.1f} {row['tokens_per_second']:9.0f} "
                f"{row['state_mib']:9.2f} {row['step_peak_mib']:9.2f}  {ratio:.2f}x"
            )
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": None}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
