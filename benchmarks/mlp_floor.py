r"""How fast can an exact LFP step on the MLP of ``step_time.py`` be on this machine, with no library at all?

``step_time.py`` measures `lfpoptim.LFPOptimizer` against a plain SGD step. This script adds the
same LFP step written out by hand for exactly this network (no trace, no rule lookup, no argument
checks, no optimizer class), doing only the arithmetic that exact epsilon-LFP needs on top of SGD's:

* each ReLU's backward multiplies by \(a / (a + \varepsilon)\) (the identity rule fused with
  the stabiliser of the Linear below it) instead of \([a > 0]\): one custom autograd function;
* the seed \(R / (b \operatorname{stab}(y))\) from the reward \(y \odot (t - \operatorname{softmax}(y))\)
  instead of cross-entropy's gradient, with the check that reward and outputs are finite;
* the update \(-|\theta| \odot J^\top n / \overline{|\theta|}\): \(|\theta|\), the sums for the
  normalisation and the finiteness check, one ``addcmul`` per tensor.

Its feedback is checked against the library's before timing. Its ratio to SGD is a floor for
any eager PyTorch implementation of the same method and the same update on this machine (only a
compiled kernel fusing the element-wise work could go below it); the gap between it and the
library's ratio is what the library's generality costs (the forward trace, the rule lookup, the
checks and the optimizer's bookkeeping).

Two stripped variants of the hand-written step show what the update's extras cost: without the
finiteness check of the feedback (``no check``), and also without the normalisation by
\(\overline{|\theta|}\) (``no check, mean``: the update of ``feedback_reduction="mean"``, which
needs learning rates ~20x SGD's). The latter is the least work an exact LFP step can do.

Each extra operation of a small step counts here: on a two-core cloud CPU an element-wise torch
operation on a 128x256 tensor inside a training step costs 15-25 µs, a few times what the same
call costs in a tight loop, so the floor is set by how many operations exact LFP adds, not by
their arithmetic.

Run from the repository root::

    python benchmarks/mlp_floor.py
    python benchmarks/mlp_floor.py --repeats 2000
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from step_time import LEARNING_RATE, MOMENTUM, NUM_CLASSES, mlp
from torch import nn

from lfpoptim import LFPOptimizer
from lfpoptim.rewards import SoftmaxLossReward

EPSILON = 1e-6
BATCH_SIZE = 128
EPSILON_TENSOR = torch.tensor(EPSILON)  # a 0-dim tensor operand is cheaper than a Python number
ZERO = torch.zeros(())


class _FusedReLU(torch.autograd.Function):
    """ReLU whose backward is the identity rule fused with the stabiliser below: ``g * a / (a + eps)``."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> torch.Tensor:
        a = torch.relu(z)
        ctx.save_for_backward(a)
        return a

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        ratio = a + EPSILON
        torch.div(a, ratio, out=ratio)
        return ratio.mul_(grad)


def handwritten_feedback(
    linears: list[nn.Linear], params: list[torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor
) -> list[torch.Tensor]:
    r"""\(J_\theta^\top n\) for ``params`` of the Linear-ReLU-...-Linear network made of ``linears``, by hand."""
    hidden = inputs
    for index, linear in enumerate(linears):
        hidden = F.linear(hidden, linear.weight, linear.bias)
        if index < len(linears) - 1:
            hidden = _FusedReLU.apply(hidden)
    with torch.no_grad():
        onehot = torch.zeros_like(hidden).scatter_(1, targets.unsqueeze(1), 1.0)
        reward = onehot.sub_(hidden.softmax(dim=1)).mul_(hidden)
        if not math.isfinite(float(torch.dot(reward.view(-1), hidden.view(-1)))):
            raise ValueError("non-finite reward or outputs")
        stabilised = hidden.abs().add_(EPSILON_TENSOR).copysign_(hidden + 0.0)
        seed = torch.div(reward, stabilised).div_(hidden.shape[0])
    return list(torch.autograd.grad(hidden, params, seed))


def handwritten_update_(
    grads: list[torch.Tensor], params: list[torch.Tensor], *, normalize: bool = True, check: bool = True
) -> None:
    r"""``grads[i] <- -|θ_i| * grads[i] / mean|θ_i|`` (without ``/ mean|θ_i|`` unless ``normalize``).

    With ``check``, non-finite feedback is refused, as the library refuses it.
    """
    with torch.no_grad():
        magnitudes = torch._foreach_abs(params)
        totals = [grad.sum() for grad in grads] if check else []
        if normalize:
            totals += [magnitude.sum() for magnitude in magnitudes]
        sums = torch.stack(totals).tolist() if totals else []
        if check and not math.isfinite(sum(sums[: len(grads)])):
            raise ValueError("non-finite feedback")
        factors = [-1.0] * len(grads)
        if normalize:
            factors = [-param.numel() / total for param, total in zip(params, sums[-len(grads) :], strict=True)]
        for grad, magnitude, factor in zip(grads, magnitudes, factors, strict=True):
            torch.addcmul(ZERO, grad, magnitude, value=factor, out=grad)


def _linears(model: nn.Sequential) -> list[nn.Linear]:
    return [module for module in model if isinstance(module, nn.Linear)]


def handwritten_step(
    model: nn.Sequential, inputs: torch.Tensor, targets: torch.Tensor, *, normalize: bool = True, check: bool = True
) -> Callable[[], None]:
    """The hand-written LFP training step on ``model`` (see `handwritten_update_` for the flags)."""
    params = list(model.parameters())
    linears = _linears(model)
    optimizer = torch.optim.SGD(params, lr=LEARNING_RATE, momentum=MOMENTUM)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        grads = handwritten_feedback(linears, params, inputs, targets)
        handwritten_update_(grads, params, normalize=normalize, check=check)
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        optimizer.step()

    return step


def contenders(model: nn.Sequential, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Callable[[], None]]:
    """One training step each for SGD, the library's LFP and the hand-written LFP steps, on copies of ``model``."""
    sgd_model, lfp_model = copy.deepcopy(model), copy.deepcopy(model)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    lfp = LFPOptimizer(lfp_model, SoftmaxLossReward(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def sgd_step() -> None:
        sgd.zero_grad(set_to_none=True)
        F.cross_entropy(sgd_model(inputs), targets).backward()
        sgd.step()

    def lfp_step() -> None:
        lfp.zero_grad(set_to_none=True)
        lfp.step(inputs, targets)

    return {
        "sgd": sgd_step,
        "lfp": lfp_step,
        "handwritten": handwritten_step(copy.deepcopy(model), inputs, targets),
        "no check": handwritten_step(copy.deepcopy(model), inputs, targets, check=False),
        "no check, mean": handwritten_step(copy.deepcopy(model), inputs, targets, normalize=False, check=False),
    }


def check_feedback(model: nn.Sequential, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Largest relative difference between the hand-written and the library's feedback (must be ~1e-7)."""
    library = LFPOptimizer(copy.deepcopy(model), SoftmaxLossReward()).feedback(inputs, targets)
    params = list(model.parameters())
    grads = handwritten_feedback(_linears(model), params, inputs, targets)
    worst = 0.0
    for expected, param, grad in zip(library.values(), params, grads, strict=True):
        feedback = param.detach().abs() * grad * param.numel() / param.detach().abs().sum()
        worst = max(worst, float((feedback - expected).abs().max() / expected.abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1000, help="timed steps per contender (default: 1000)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = mlp()
    inputs = torch.randn(BATCH_SIZE, 64)
    targets = torch.randint(0, NUM_CLASSES, (BATCH_SIZE,))
    print(f"hand-written vs library feedback: max relative difference {check_feedback(model, inputs, targets):.1e}")

    steps = contenders(model, inputs, targets)
    for step in steps.values():
        for _ in range(30):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for repetition in range(args.repeats):  # interleaved, the first one rotating, as in step_time.py
        first = repetition % len(names)
        for name in names[first:] + names[:first]:
            start = time.thread_time()
            steps[name]()
            times[name].append((time.thread_time() - start) * 1e3)
    print(f"MLP 64-256-256-10, batch {BATCH_SIZE}, one thread, {args.repeats} interleaved repetitions (CPU time)")
    for name in names:
        ratio = statistics.median(t / s for t, s in zip(times[name], times["sgd"], strict=True))
        print(f"{name:>14}  {statistics.median(times[name]):6.2f} ms  {ratio:5.2f}x SGD")


if __name__ == "__main__":
    main()
