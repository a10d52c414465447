"""LFP rules and the default map from torch functions to rules.

The map is keyed by the torch function the model's forward calls (``F.linear``, ``Tensor.add``,
``F.relu``, ...): modules need no rewriting, and functional code such as a residual ``x += shortcut``
inside a timm block is covered as well. Functions missing from the map run unchanged: their
gradient moves the reward (max pooling, reshapes, concatenation, indexing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..modules import heaviside
from .activations import IdentityActivationRule
from .base import FusionCell, Rule, TorchFunction, Trace, is_inplace_call
from .dropout import DropoutMode, DropoutRule
from .epsilon import EpsilonRule, stabilise, stabiliser_ratio

RuleMap = dict[TorchFunction, Rule]

EPSILON_FUNCTIONS: tuple[TorchFunction, ...] = (
    F.linear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
    F.batch_norm,
    F.layer_norm,
    F.group_norm,
    F.instance_norm,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    torch.mean,
    torch.Tensor.mean,
    torch.add,
    torch.Tensor.add,
    torch.Tensor.add_,
    torch.Tensor.__add__,
    torch.Tensor.__radd__,
    torch.Tensor.__iadd__,
    torch.sub,
    torch.Tensor.sub,
    torch.Tensor.sub_,
    torch.Tensor.__sub__,
    torch.Tensor.__rsub__,
    torch.Tensor.__isub__,
)
"""Functions whose output gets the epsilon rule: layers with parameters, pooling by averaging, sums."""

# function -> (position of its positional ``inplace`` argument, out-of-place form if in place)
ACTIVATION_FUNCTIONS: dict[TorchFunction, tuple[int | None, TorchFunction | None]] = {
    F.relu: (1, None),
    torch.relu: (None, None),
    torch.Tensor.relu: (None, None),
    torch.relu_: (None, torch.relu),
    torch.Tensor.relu_: (None, torch.relu),
    F.leaky_relu: (2, None),
    F.elu: (2, None),
    F.selu: (1, None),
    F.celu: (2, None),
    F.relu6: (1, None),
    F.hardtanh: (3, None),
    F.silu: (1, None),
    F.gelu: (None, None),
    F.softplus: (None, None),
    F.hardswish: (1, None),
    F.hardsigmoid: (1, None),
    F.mish: (1, None),
    F.tanh: (None, None),
    torch.tanh: (None, None),
    torch.Tensor.tanh: (None, None),
    F.sigmoid: (None, None),
    torch.sigmoid: (None, None),
    torch.Tensor.sigmoid: (None, None),
    heaviside: (None, None),
}
"""Element-wise activations that get the identity rule."""

DROPOUT_FUNCTIONS: tuple[TorchFunction, ...] = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)


def default_rules(epsilon: float = 1e-6, dropout: DropoutMode = "reference") -> RuleMap:
    """The epsilon-LFP rule map of ``docs/concepts.md``.

    Args:
        epsilon: ε of every epsilon-rule operation.
        dropout: how train-mode dropout treats reward, see `DropoutRule`.
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be non-negative, got {epsilon}")
    rules: RuleMap = dict.fromkeys(EPSILON_FUNCTIONS, EpsilonRule(epsilon))
    for func, (inplace_position, out_of_place) in ACTIVATION_FUNCTIONS.items():
        rules[func] = IdentityActivationRule(inplace_position, out_of_place)
    rules.update(dict.fromkeys(DROPOUT_FUNCTIONS, DropoutRule(dropout)))
    return rules


__all__ = [
    "ACTIVATION_FUNCTIONS",
    "DROPOUT_FUNCTIONS",
    "EPSILON_FUNCTIONS",
    "DropoutRule",
    "EpsilonRule",
    "FusionCell",
    "IdentityActivationRule",
    "Rule",
    "RuleMap",
    "Trace",
    "default_rules",
    "is_inplace_call",
    "stabilise",
    "stabiliser_ratio",
]
