"""Train the reference's small spiking MLP (64-1000-10 LIF neurons, 15 time steps) on digits with LFP.

The setup is the reference's SNN example (lfprop's ``minimal_example_spiking_nets.ipynb``): LIF
neurons with decay 0.9 and threshold 1, the image fed as a constant current at every step, the
rate-coded spike reward divided by the number of steps, feedback summed over the batch, its norm
clipped to 3, SGD with learning rate 0.02 and momentum 0.9, batches of 128. The class is the output
neuron that spiked most often. Digits are split 80/20, stratified, ``random_state=0``, with pixels
scaled as x/16 then (x - 0.5)/0.5 (the reference's MNIST normalisation); the rate encoder gets x/16.

    python examples/snn_digits.py                     # 30 epochs, reset by subtraction and to zero
    python examples/snn_digits.py --resets zero --epochs 10
    python examples/snn_digits.py --encoder rate      # Bernoulli rate coding instead of a constant current
    python examples/snn_digits.py --smoke             # 4 batches: checks that everything runs
"""

from __future__ import annotations

import argparse
import time

import torch
from _digits import Digits, accuracy, load_digits_split, train_epoch  # examples/_digits.py, next to this file

from lfpoptim import LFPOptimizer
from lfpoptim.snn import (
    ConstantCurrentEncoder,
    RateCodedSpikeReward,
    RateEncoder,
    SpikingMLP,
    spike_count_predictions,
)

NUM_STEPS = 15
LEARNING_RATE = 0.02
MOMENTUM = 0.9
CLIP_NORM = 3.0


def load_data(encoder: str) -> Digits:
    """The shared digits split in [-1, 1]; for the rate encoder, scaled back to x/16 in [0, 1] (exact in float32)."""
    data = load_digits_split()
    if encoder == "constant":
        return data
    return data._replace(train_inputs=data.train_inputs * 0.5 + 0.5, test_inputs=data.test_inputs * 0.5 + 0.5)


def train(data: Digits, reset: str, *, encoder: str, epochs: int, seed: int, max_batches: int | None) -> float:
    torch.manual_seed(seed)
    encode = ConstantCurrentEncoder(NUM_STEPS) if encoder == "constant" else RateEncoder(NUM_STEPS)
    model = SpikingMLP(64, (1000,), 10, beta=0.9, threshold=1.0, reset=reset, encoder=encode)
    optimizer = LFPOptimizer(
        model,
        RateCodedSpikeReward(),
        preset="snn",
        feedback_reduction="sum",
        clip_norm=CLIP_NORM,
        lr=LEARNING_RATE,
        momentum=MOMENTUM,
    )
    batch_order = torch.Generator().manual_seed(seed)
    test_accuracy = 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train_epoch(optimizer, data.train_inputs, data.train_targets, batch_order, max_batches)
        seconds = time.perf_counter() - start
        train_accuracy = accuracy(model, data.train_inputs, data.train_targets, spike_count_predictions)
        test_accuracy = accuracy(model, data.test_inputs, data.test_targets, spike_count_predictions)
        print(
            f"reset={reset:8s} epoch {epoch:3d}  train accuracy {train_accuracy:.4f}  "
            f"test accuracy {test_accuracy:.4f}  ({seconds:.1f} s of training)",
            flush=True,
        )
    return test_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="epochs (default: 30)")
    parser.add_argument("--resets", default="subtract,zero", help="reset mechanisms to train, comma-separated")
    parser.add_argument("--encoder", choices=("constant", "rate"), default="constant", help="input encoding")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the batch order")
    parser.add_argument("--smoke", action="store_true", help="4 batches: a quick check that it runs")
    args = parser.parse_args()
    epochs, max_batches = (1, 4) if args.smoke else (args.epochs, None)

    data = load_data(args.encoder)
    results = {
        reset: train(data, reset, encoder=args.encoder, epochs=epochs, seed=args.seed, max_batches=max_batches)
        for reset in args.resets.split(",")
    }
    for reset, test_accuracy in results.items():
        print(f"reset={reset:8s} final test accuracy {test_accuracy:.4f} after {epochs} epoch(s), {args.encoder} input")


if __name__ == "__main__":
    main()
