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
from .attention import ScaledDotProductAttentionRule, SoftmaxRule
from .base import FusionCell, Rule, TorchFunction, Trace, is_inplace_call
from .bilinear import GradientAttentionRule
from .coverage import (
    GRADIENT_OPERATIONS,
    CoverageCheck,
    UncoveredOperationError,
    UncoveredOperationWarning,
    operation_name,
    passes_reward,
)
from .dropout import DropoutMode, DropoutRule
from .elementwise import NormalizeRule, PowerRule
from .epsilon import EpsilonRule, stabilise, stabiliser_ratio
from .gating import GateActivationRule
from .modules import ModuleClass
from .normalization import ConstantScaleRule, LayerNormRule
from .products import (
    AddcmulRule,
    DivisionRule,
    EinsumRule,
    ProductRule,
    SignalProducts,
    is_parameter_like,
    product_kind,
)

RuleMap = dict[TorchFunction, Rule]

ADDITION_FUNCTIONS: tuple[TorchFunction, ...] = (
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
"""The sums and differences of two tensors among `EPSILON_FUNCTIONS` (residual connections)."""

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
    *ADDITION_FUNCTIONS,
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


SUM_FUNCTIONS: tuple[TorchFunction, ...] = (torch.sum, torch.Tensor.sum, F.fold)
"""Sums over dimensions, and ``F.fold``'s sum of overlapping patches (VOLO): the epsilon rule, like ``torch.mean``."""

MULTIPLY_FUNCTIONS: tuple[TorchFunction, ...] = (
    torch.mul,
    torch.multiply,
    torch.Tensor.mul,
    torch.Tensor.mul_,
    torch.Tensor.multiply,
    torch.Tensor.__mul__,
    torch.Tensor.__rmul__,
    torch.Tensor.__imul__,
)
"""Element-wise products of two tensors, see `ProductRule`."""

MATMUL_FUNCTIONS: tuple[TorchFunction, ...] = (
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.Tensor.__rmatmul__,
    torch.bmm,
    torch.Tensor.bmm,
)
"""Matrix products of two tensors, see `ProductRule`."""

DIVISION_FUNCTIONS: tuple[TorchFunction, ...] = (
    torch.div,
    torch.divide,
    torch.true_divide,
    torch.Tensor.div,
    torch.Tensor.div_,
    torch.Tensor.divide,
    torch.Tensor.true_divide,
    torch.Tensor.__truediv__,
    torch.Tensor.__itruediv__,
)
"""Divisions ``a / b`` (not ``c / b`` written as ``b.__rtruediv__(c)``: that is not linear in anything)."""

ADDCMUL_FUNCTIONS: tuple[TorchFunction, ...] = (torch.addcmul, torch.Tensor.addcmul, torch.Tensor.addcmul_)

EINSUM_FUNCTIONS: tuple[TorchFunction, ...] = (torch.einsum,)

POWER_FUNCTIONS: tuple[TorchFunction, ...] = (torch.pow, torch.Tensor.pow, torch.Tensor.__pow__, torch.square)

NORMALIZE_FUNCTIONS: tuple[TorchFunction, ...] = (F.normalize,)

RESAMPLING_FUNCTIONS: tuple[TorchFunction, ...] = (F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear)
"""Up- and down-sampling: weighted sums of the input with fixed weights, so the epsilon rule."""

SOFTMAX_FUNCTIONS: tuple[TorchFunction, ...] = (F.softmax, torch.softmax, torch.Tensor.softmax)

ATTENTION_FUNCTIONS: tuple[TorchFunction, ...] = (F.scaled_dot_product_attention,)

# function -> position of its positional ``inplace`` argument
GATE_FUNCTIONS: dict[TorchFunction, int | None] = {
    F.sigmoid: None,
    torch.sigmoid: None,
    torch.Tensor.sigmoid: None,
    F.hardsigmoid: 1,
}
"""Sigmoid-like activations (whose resting value is not 0) that may gate a signal, see `GateActivationRule`."""


def extended_rules(
    epsilon: float = 1e-6,
    dropout: DropoutMode = "reference",
    sum_epsilon: float | None = None,
    signal_products: SignalProducts = "uniform",
) -> RuleMap:
    """Rules for what `default_rules` leaves to the gradient, to add to it: products, attention, and more.

    Products and divisions (`ProductRule`, `DivisionRule`, `AddcmulRule`, `EinsumRule`), gates
    (`GateActivationRule`, replacing the identity rule of sigmoid-like activations), softmax
    (`SoftmaxRule`), fused attention (`ScaledDotProductAttentionRule`), powers and
    normalisation (`PowerRule`, `NormalizeRule`), and the epsilon rule on resampling
    (``F.interpolate``) and sums (``torch.sum``, ``F.fold``).

    Args:
        epsilon: ε of the epsilon rule where a matrix product, an ``einsum`` or a resampling
            sums many contributions (a signal times a parameter matrix).
        dropout: how attention dropout treats reward, see `DropoutRule`.
        sum_epsilon: ε of ``torch.sum``, ``F.fold`` and ``addcmul``, and of element-wise scaling by a
            parameter (layer scale: one contribution per output, so a stabiliser has nothing to
            stabilise there and a large ε only damps the reward); ``epsilon`` when ``None``.
        signal_products: how an element-wise product of two signals (a gate) shares its reward,
            see `lfpoptim.rules.products.SignalProducts`; matrix products keep the uniform rule.
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be non-negative, got {epsilon}")
    sum_epsilon = epsilon if sum_epsilon is None else sum_epsilon
    rules: RuleMap = dict.fromkeys(SUM_FUNCTIONS, EpsilonRule(sum_epsilon))
    rules.update(dict.fromkeys(MULTIPLY_FUNCTIONS, ProductRule(sum_epsilon, signal_products)))
    rules.update(dict.fromkeys(MATMUL_FUNCTIONS, ProductRule(epsilon)))
    rules.update(dict.fromkeys(DIVISION_FUNCTIONS, DivisionRule(sum_epsilon)))
    rules.update(dict.fromkeys(ADDCMUL_FUNCTIONS, AddcmulRule(sum_epsilon)))
    rules.update(dict.fromkeys(EINSUM_FUNCTIONS, EinsumRule(epsilon)))
    rules.update(dict.fromkeys(POWER_FUNCTIONS, PowerRule()))
    rules.update(dict.fromkeys(NORMALIZE_FUNCTIONS, NormalizeRule()))
    rules.update(dict.fromkeys(RESAMPLING_FUNCTIONS, EpsilonRule(epsilon)))
    rules.update({func: GateActivationRule(position) for func, position in GATE_FUNCTIONS.items()})
    rules.update(dict.fromkeys(SOFTMAX_FUNCTIONS, SoftmaxRule()))
    rules.update(dict.fromkeys(ATTENTION_FUNCTIONS, ScaledDotProductAttentionRule(dropout)))
    return rules


__all__ = [
    "ACTIVATION_FUNCTIONS",
    "ADDCMUL_FUNCTIONS",
    "ADDITION_FUNCTIONS",
    "ATTENTION_FUNCTIONS",
    "DIVISION_FUNCTIONS",
    "DROPOUT_FUNCTIONS",
    "EINSUM_FUNCTIONS",
    "EPSILON_FUNCTIONS",
    "GATE_FUNCTIONS",
    "GRADIENT_OPERATIONS",
    "MATMUL_FUNCTIONS",
    "MULTIPLY_FUNCTIONS",
    "NORMALIZE_FUNCTIONS",
    "POWER_FUNCTIONS",
    "RESAMPLING_FUNCTIONS",
    "SOFTMAX_FUNCTIONS",
    "SUM_FUNCTIONS",
    "AddcmulRule",
    "ConstantScaleRule",
    "CoverageCheck",
    "DivisionRule",
    "DropoutRule",
    "EinsumRule",
    "EpsilonRule",
    "FusionCell",
    "GateActivationRule",
    "GradientAttentionRule",
    "IdentityActivationRule",
    "LayerNormRule",
    "ModuleClass",
    "NormalizeRule",
    "PowerRule",
    "ProductRule",
    "Rule",
    "RuleMap",
    "ScaledDotProductAttentionRule",
    "SignalProducts",
    "SoftmaxRule",
    "Trace",
    "UncoveredOperationError",
    "UncoveredOperationWarning",
    "default_rules",
    "extended_rules",
    "is_inplace_call",
    "is_parameter_like",
    "operation_name",
    "passes_reward",
    "product_kind",
    "stabilise",
    "stabiliser_ratio",
]
