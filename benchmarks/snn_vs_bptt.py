"""LFP against surrogate-gradient BPTT on the same spiking network: step time and accuracy after equal epochs.

Needs snntorch (``pip install 'lfpoptim[snn]'``); without it the script says so and exits.

Both methods train the reference's small spiking MLP (64-1000-10, LIF neurons with decay 0.9 and
threshold 1, reset by subtraction, 15 time steps, the image as a constant current) on the digits
split of ``examples/snn_digits.py``, from the same initial weights and with the same batches:

* **LFP**: `lfpoptim.snn.SpikingMLP` and the reference's LFP setup (``RateCodedSpikeReward``,
  feedback summed over the batch and clipped to norm 3, SGD with learning rate 0.02 and
  momentum 0.9), one ``LFPOptimizer.step`` per batch;
* **BPTT**: the same layers with ``snntorch.Leaky`` neurons (arctan surrogate gradient, snntorch's
  default), unrolled over the 15 steps, snntorch's ``ce_rate_loss`` (cross-entropy of the output
  spikes at every step), ``backward()`` through time and an Adam step (learning rate 1e-3), as in
  snntorch's tutorials.

The forward dynamics of the two networks are identical (``tests/test_snn.py`` checks it). Step
times are CPU times of the calling thread on one torch thread (steadier than wall time on a shared
machine), measured on the training steps themselves, which alternate between the methods; the
table shows the medians and the median of the per-batch time ratios.

    python benchmarks/snn_vs_bptt.py               # 10 epochs each
    python benchmarks/snn_vs_bptt.py --epochs 30 --bptt-lr 5e-4
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from lfpoptim import LFPOptimizer
from lfpoptim.snn import ConstantCurrentEncoder, RateCodedSpikeReward, SpikingMLP, spike_count_predictions

NUM_STEPS = 15
BATCH_SIZE = 128


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels = load_digits(return_X_y=True)
    inputs = (images / 16.0 - 0.5) / 0.5
    train_x, test_x, train_y, test_y = train_test_split(inputs, labels, test_size=0.2, random_state=0, stratify=labels)
    as_float = lambda array: torch.tensor(array, dtype=torch.float32)  # noqa: E731
    return as_float(train_x), torch.tensor(train_y), as_float(test_x), torch.tensor(test_y)


class SnntorchMLP(nn.Module):
    """The same 64-1000-10 network with snntorch neurons, unrolled over time for BPTT."""

    def __init__(self, snntorch: object, template: SpikingMLP) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 1000), nn.Linear(1000, 10)
        self.fc1.load_state_dict(template.network[0].layer.state_dict())
        self.fc2.load_state_dict(template.network[1].layer.state_dict())
        self.lif1 = snntorch.Leaky(beta=0.9, threshold=1.0, reset_mechanism="subtract")
        self.lif2 = snntorch.Leaky(beta=0.9, threshold=1.0, reset_mechanism="subtract")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        membrane1, membrane2 = self.lif1.reset_mem(), self.lif2.reset_mem()
        spikes = []
        for _ in range(NUM_STEPS):
            hidden, membrane1 = self.lif1(self.fc1(inputs), membrane1)
            output, membrane2 = self.lif2(self.fc2(hidden), membrane2)
            spikes.append(output)
        return torch.stack(spikes)


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    return (spike_count_predictions(model(inputs)) == targets).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each method (default: 10)")
    parser.add_argument("--bptt-lr", type=float, default=1e-3, help="Adam's learning rate for BPTT (default: 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if importlib.util.find_spec("snntorch") is None:
        sys.exit("this benchmark needs snntorch: pip install 'lfpoptim[snn]' (or pip install snntorch)")
    import snntorch
    import snntorch.functional as snn_functional

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    train_x, train_y, test_x, test_y = load_data()
    lfp_model = SpikingMLP(64, (1000,), 10, beta=0.9, encoder=ConstantCurrentEncoder(NUM_STEPS))
    bptt_model = SnntorchMLP(snntorch, lfp_model)
    lfp = LFPOptimizer(
        lfp_model, RateCodedSpikeReward(), preset="snn", feedback_reduction="sum", clip_norm=3.0, lr=0.02, momentum=0.9
    )
    adam = torch.optim.Adam(bptt_model.parameters(), lr=args.bptt_lr)
    rate_loss = snn_functional.ce_rate_loss()

    def lfp_step(inputs: torch.Tensor, targets: torch.Tensor) -> None:
        lfp.zero_grad(set_to_none=True)
        lfp.step(inputs, targets)

    def bptt_step(inputs: torch.Tensor, targets: torch.Tensor) -> None:
        adam.zero_grad(set_to_none=True)
        rate_loss(bptt_model(inputs), targets).backward()
        adam.step()

    times: dict[str, list[float]] = {"LFP": [], "BPTT": []}
    steps = {"LFP": lfp_step, "BPTT": bptt_step}
    order = torch.Generator().manual_seed(args.seed)
    print(f"{'epoch':>5}  {'LFP test acc':>12}  {'BPTT test acc':>13}")
    for epoch in range(1, args.epochs + 1):
        for index, batch in enumerate(torch.randperm(len(train_y), generator=order).split(BATCH_SIZE)):
            names = ("LFP", "BPTT") if index % 2 == 0 else ("BPTT", "LFP")
            for name in names:
                start = time.thread_time()
                steps[name](train_x[batch], train_y[batch])
                times[name].append(time.thread_time() - start)
        lfp_accuracy = accuracy(lfp_model, test_x, test_y)
        bptt_accuracy = accuracy(bptt_model, test_x, test_y)
        print(f"{epoch:5d}  {lfp_accuracy:12.4f}  {bptt_accuracy:13.4f}", flush=True)

    ratios = [lfp_time / bptt_time for lfp_time, bptt_time in zip(times["LFP"], times["BPTT"], strict=True)]
    print()
    print(f"{'method':>6}  {'step ms (median)':>16}  {'test accuracy':>13}")
    print(f"{'LFP':>6}  {1e3 * statistics.median(times['LFP']):16.1f}  {lfp_accuracy:13.4f}")
    print(f"{'BPTT':>6}  {1e3 * statistics.median(times['BPTT']):16.1f}  {bptt_accuracy:13.4f}")
    print(f"LFP/BPTT step time ratio (median over {len(ratios)} batches): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
