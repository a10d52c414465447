"""The one-pass engine against an independent, layer-by-layer epsilon-LFP (``lfp_reference.py``).

Every comparison is ``max|ours - ref| / max|ref|`` per parameter tensor, with feedback summed over
the batch. The reference walks relevances layer by layer and never uses the gradient formulation,
so agreement checks the engine's fused stabilisers, its output hooks, the identity rule of every
activation, residual sums written in three ways, in-place activations and train-mode dropout.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from lfp_reference import ACTIVATIONS, EPSILON_LAYERS, GRADIENT_LAYERS, AddForm, Residual, reference_lfp, stab
from torch import nn

from lfpoptim import Heaviside, LFPOptimizer, SoftmaxLossReward
from lfpoptim.engine import lfp_pass
from lfpoptim.rules import default_rules

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
EPSILONS = (1e-6, 0.1)
SEEDS = (0, 1, 2)
BATCH = 6
CLASSES = 10
ADD_FORMS: tuple[AddForm, ...] = ("operator", "torch.add", "inplace")

ACTIVATION_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu_inplace": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "leaky_relu_inplace": lambda: nn.LeakyReLU(0.1, inplace=True),
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "silu_inplace": lambda: nn.SiLU(inplace=True),
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "hardswish": nn.Hardswish,
    "mish": nn.Mish,
    "heaviside": Heaviside,
}

RewardFn = Callable[[torch.Tensor, Any], torch.Tensor]


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|ours - ref| / max|ref|``; 0 when both are zero, infinite when only ``ref`` is."""
    scale = ref.abs().max()
    difference = (ours - ref).abs().max()
    if scale == 0:
        return 0.0 if difference == 0 else float("inf")
    return float(difference / scale)


def worst_errors(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    assert ours.keys() == ref.keys()
    return {name: relative_error(ours[name], ref[name]) for name in ref}


def assert_close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], tolerance: float) -> None:
    errors = worst_errors(ours, ref)
    failing = {name: error for name, error in errors.items() if not error <= tolerance}
    assert not failing, f"feedback differs from the reference beyond {tolerance:g}: {failing}"


def fixed_reward(reward: torch.Tensor) -> RewardFn:
    """A reward that ignores the outputs: one signed value per output unit."""

    def reward_fn(outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        return reward.to(outputs.dtype)

    return reward_fn


def inplace_flags(model: nn.Module) -> dict[str, bool]:
    return {name: module.inplace for name, module in model.named_modules() if hasattr(module, "inplace")}


@dataclass
class Comparison:
    """The engine's and the reference's results for one model and batch."""

    feedback: dict[str, torch.Tensor]
    ref_feedback: dict[str, torch.Tensor]
    input_reward: torch.Tensor
    ref_input_reward: torch.Tensor
    outputs: torch.Tensor
    ref_outputs: torch.Tensor


def compare(
    model: nn.Module, inputs: torch.Tensor, targets: Any, reward_fn: RewardFn, epsilon: float, seed: int = 0
) -> Comparison:
    """Run the reference on a copy of ``model``, then the engine twice (feedback, input reward).

    The global seed is reset before each pass so that train-mode dropout draws the same masks.
    """
    torch.manual_seed(seed)
    ref = reference_lfp(copy.deepcopy(model), inputs, targets, reward_fn, epsilon)
    optimizer = LFPOptimizer(model, reward_fn, epsilon=epsilon, feedback_reduction="sum", lr=0.1)
    torch.manual_seed(seed)
    feedback = optimizer.feedback(inputs, targets)
    torch.manual_seed(seed)
    engine = lfp_pass(
        model, inputs, targets, reward_fn, list(model.parameters()), default_rules(epsilon), "sum", True
    )
    assert engine.input_reward is not None
    return Comparison(feedback, ref.feedback, engine.input_reward, ref.input_reward, engine.outputs, ref.outputs)


def check(comparison: Comparison, dtype: torch.dtype) -> dict[str, float]:
    """Assert every parameter's feedback, the input reward and the outputs match; return the errors."""
    tolerance = TOLERANCE[dtype]
    assert_close(comparison.feedback, comparison.ref_feedback, tolerance)
    input_error = relative_error(comparison.input_reward, comparison.ref_input_reward)
    assert input_error <= tolerance, f"input reward differs from the reference by {input_error:.3g}"
    assert relative_error(comparison.outputs, comparison.ref_outputs) <= tolerance
    return worst_errors(comparison.feedback, comparison.ref_feedback)


# -- randomised models from every supported layer ---------------------------------------------------


def randomise_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Give norm layers non-trivial affine parameters and running statistics (init makes them 1 and 0)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(0.3 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))


def mlp(pick: random.Random) -> tuple[nn.Module, tuple[int, ...]]:
    """Linear, BatchNorm1d, LayerNorm, dropout, a Linear feeding a Linear, a residual block."""

    def act() -> nn.Module:
        return ACTIVATION_FACTORIES[pick.choice(list(ACTIVATION_FACTORIES))]()

    model = nn.Sequential(
        nn.Linear(24, 32),
        act(),
        nn.Dropout(0.25),
        nn.Linear(32, 32, bias=False),
        nn.BatchNorm1d(32),
        act(),
        nn.Linear(32, 24),
        nn.LayerNorm(24),
        act(),
        nn.Linear(24, 24),
        nn.Linear(24, 16),
        act(),
        Residual(nn.Sequential(nn.Linear(16, 16, bias=False), nn.BatchNorm1d(16)), act=act(), add=pick.choice(ADD_FORMS)),
        nn.Linear(16, CLASSES),
    )
    return model, (24,)


def conv1d(pick: random.Random) -> tuple[nn.Module, tuple[int, ...]]:
    """Conv1d, AvgPool1d, GroupNorm, MaxPool1d feeding an activation, Dropout1d, AdaptiveAvgPool1d."""

    def act() -> nn.Module:
        return ACTIVATION_FACTORIES[pick.choice(list(ACTIVATION_FACTORIES))]()

    model = nn.Sequential(
        nn.Conv1d(3, 8, 3, padding=1),
        act(),
        nn.AvgPool1d(2),
        nn.Conv1d(8, 8, 3, bias=False),
        nn.GroupNorm(2, 8),
        act(),
        nn.Conv1d(8, 8, 3, padding=1),
        nn.MaxPool1d(2),
        act(),
        nn.Dropout1d(0.2),
        nn.Conv1d(8, 6, 1),
        act(),
        nn.AdaptiveAvgPool1d(2),
        nn.Flatten(),
        nn.Linear(12, CLASSES),
    )
    return model, (3, 20)


def conv2d_residual(pick: random.Random) -> tuple[nn.Module, tuple[int, ...]]:
    """Conv2d, BatchNorm2d, in-place ReLU, two residual blocks, MaxPool2d, AvgPool2d, Dropout2d."""

    def act() -> nn.Module:
        return ACTIVATION_FACTORIES[pick.choice(list(ACTIVATION_FACTORIES))]()

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        Residual(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)),
            act=nn.ReLU(inplace=True),
            add=pick.choice(ADD_FORMS),
        ),
        nn.MaxPool2d(2),
        Residual(
            nn.Sequential(
                nn.Conv2d(8, 12, 3, padding=1, bias=False),
                nn.BatchNorm2d(12),
                act(),
                nn.Conv2d(12, 12, 3, padding=1),
            ),
            shortcut=nn.Conv2d(8, 12, 1),
            act=act(),
            add=pick.choice(ADD_FORMS),
        ),
        nn.Dropout2d(0.2),
        nn.AvgPool2d(2),
        nn.Conv2d(12, 12, 1),
        act(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(12, CLASSES),
    )
    return model, (3, 8, 8)


def conv3d(pick: random.Random) -> tuple[nn.Module, tuple[int, ...]]:
    """Conv3d, MaxPool3d, BatchNorm3d, AvgPool3d, GroupNorm, Dropout3d, AdaptiveAvgPool3d."""

    def act() -> nn.Module:
        return ACTIVATION_FACTORIES[pick.choice(list(ACTIVATION_FACTORIES))]()

    model = nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1),
        act(),
        nn.MaxPool3d(2),
        nn.Conv3d(4, 6, 3, padding=1, bias=False),
        nn.BatchNorm3d(6),
        act(),
        nn.AvgPool3d(2, stride=1),
        nn.Dropout3d(0.2),
        nn.Conv3d(6, 6, 1),
        nn.GroupNorm(3, 6),
        act(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(6, CLASSES),
    )
    return model, (2, 6, 6, 6)


FAMILIES: dict[str, Callable[[random.Random], tuple[nn.Module, tuple[int, ...]]]] = {
    "mlp": mlp,
    "conv1d": conv1d,
    "conv2d_residual": conv2d_residual,
    "conv3d": conv3d,
}


def random_case(family: str, seed: int, dtype: torch.dtype, train: bool) -> tuple[nn.Module, torch.Tensor, RewardFn, Any]:
    """A model of ``family`` with activations, residual sums and weights drawn from ``seed``, and a batch.

    Even seeds use :class:`SoftmaxLossReward`, odd seeds a fixed random reward of both signs.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(1000 + seed)
    model, input_shape = FAMILIES[family](random.Random(seed))
    randomise_norms(model, generator)
    model = model.to(dtype).train(train)
    inputs = torch.randn((BATCH, *input_shape), generator=generator).to(dtype)
    targets = torch.randint(0, CLASSES, (BATCH,), generator=generator)
    if seed % 2 == 0:
        return model, inputs, SoftmaxLossReward(), targets
    return model, inputs, fixed_reward(torch.randn((BATCH, CLASSES), generator=generator)), targets


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_feedback_matches_reference_on_random_models(
    family: str, seed: int, dtype: torch.dtype, epsilon: float, train: bool
) -> None:
    model, inputs, reward_fn, targets = random_case(family, seed, dtype, train)
    flags = inplace_flags(model)
    check(compare(model, inputs, targets, reward_fn, epsilon, seed), dtype)
    assert inplace_flags(model) == flags


def test_random_models_cover_every_supported_layer() -> None:
    """The families above and the activation test below use every layer the reference knows."""
    used = {type(module) for family in FAMILIES for seed in SEEDS for module in random_case(family, seed, torch.float32, True)[0].modules()}
    used |= {type(factory()) for factory in ACTIVATION_FACTORIES.values()}
    missing = {layer.__name__ for layer in (*EPSILON_LAYERS, *ACTIVATIONS, *GRADIENT_LAYERS) if layer not in used}
    assert not missing, f"no test model uses {sorted(missing)}"
    assert {module.add for family in FAMILIES for seed in SEEDS for module in random_case(family, seed, torch.float32, True)[0].modules() if isinstance(module, Residual)} == set(ADD_FORMS)
