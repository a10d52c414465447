r"""Products of two signals: gating, the bilinear products of attention, and layer scale.

For \(y = a \odot b\) (or \(y = a\,b\), a matrix product) with both factors computed from the
input, the reward is split evenly between the factors: the *uniform rule* of AttnLRP (Achtibat et
al., ICML 2024, Proposition 3.2), \(R_a = R_b = \tfrac12 R_y\) in aggregate. In the gradient
formulation (\(g_x = R_x / x\)) that is plain backpropagation with both factors' gradients
halved: \(a \odot \partial y / \partial a\, g_y\) already carries all of \(R_y\) to \(a\)
(a product is homogeneous of degree one in each factor), and the other factor likewise, so plain
gradients would double the reward. The halving is lxt's ``divide_gradient`` on each factor.

Squeeze-and-excitation gates (\(x \odot \sigma(s)\)), gated MLPs and attention's
\(q k^\top\) and \(A v\) get this rule. Three other cases are not products of two signals:

- a factor is a *parameter* (layer scale \(\gamma \odot x\), ResMLP's affine map): the operation
  is a layer with parameters, linear in its input, and gets the epsilon rule;
- a factor is a constant (a Python number, a tensor that needs no gradient such as a drop-path
  mask): the operation is linear and homogeneous in the other factor, so its gradient moves the
  reward unchanged;
- both factors are parameters: no input reaches the product, nothing to propagate.

A tensor counts as a parameter when it is an ``nn.Parameter`` or is computed from one through
reshapes, views, indexing or casts only (``gamma.reshape(1, -1, 1, 1)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ._lxt import divide_gradient
from .base import OutputGradientHook, TorchFunction, Trace, is_inplace_call
from .epsilon import mark_output
from .gating import is_gate, mark_gate

ProductKind = Literal["uniform", "parameter", "constant"]

SignalProducts = Literal["uniform", "gradient"]
r"""How a product of two signals \(y = a \odot b\) hands on its reward.

- ``"uniform"``: AttnLRP's uniform rule, \(R_a = R_b = 	frac12 R_y\) (conservative).
- ``"gradient"``: each factor receives the whole reward of the product with the other factor held
  fixed, \(R_a = R_b = R_y\): the product's own gradient. Not conservative, but it does not halve
  the reward at every product: in a network with \(k\) gates (squeeze-and-excitation blocks) in
  sequence, the uniform rule hands the first layers \(2^{-k}\) of what reaches the last ones.
"""

_PARAMETER_VIEWS = frozenset(
    {
        "ViewBackward0",
        "ReshapeAliasBackward0",
        "UnsafeViewBackward0",
        "ExpandBackward0",
        "PermuteBackward0",
        "TransposeBackward0",
        "TBackward0",
        "UnsqueezeBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "SqueezeBackward3",
        "ToCopyBackward0",
        "CloneBackward0",
        "SliceBackward0",
        "SelectBackward0",
        "IndexBackward0",
    }
)
"""Autograd nodes that only rearrange or cast a tensor: a parameter seen through them is still one."""

_MAX_VIEW_CHAIN = 8


def is_parameter_like(tensor: Any) -> bool:
    """Whether ``tensor`` is an ``nn.Parameter``, or one seen through reshapes, indexing and casts.

    Args:
        tensor: any value (only a tensor that requires a gradient can be parameter-like).

    Returns:
        whether it is a parameter, or reaches one through at most 8 view, indexing or cast nodes.
    """
    if not isinstance(tensor, torch.Tensor) or not tensor.requires_grad:
        return False
    node = tensor.grad_fn
    if node is None:
        return isinstance(tensor, nn.Parameter)
    for _ in range(_MAX_VIEW_CHAIN):
        name = node.name()
        if name == "torch::autograd::AccumulateGrad":
            return isinstance(node.variable, nn.Parameter)
        if name not in _PARAMETER_VIEWS:
            return False
        parents = [parent for parent, _ in node.next_functions if parent is not None]
        if len(parents) != 1:
            return False
        node = parents[0]
    return False


def _is_signal(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad and not is_parameter_like(value)


def product_kind(first: Any, second: Any) -> ProductKind:
    """Which rule a product of ``first`` and ``second`` gets (see the module's description).

    Args:
        first: the first factor (a tensor or a number).
        second: the second factor (a tensor or a number).

    Returns:
        ``"uniform"`` for two signals, ``"parameter"`` for a signal and a parameter, else ``"constant"``.
    """
    signals = _is_signal(first) + _is_signal(second)
    if signals == 2:
        return "uniform"
    parameters = is_parameter_like(first) + is_parameter_like(second)
    if signals == 1 and parameters == 1:
        return "parameter"
    return "constant"


class _GradientScale(OutputGradientHook):
    """Autograd node pre-hook: multiplies the gradient arriving at output ``output_nr`` by ``factor``."""

    __slots__ = ("factor",)

    def __init__(self, factor: float, output_nr: int) -> None:
        super().__init__(output_nr)
        self.factor = factor

    def scale(self, grad: torch.Tensor) -> torch.Tensor:
        """``grad * factor``."""
        return grad * self.factor


def scale_gradient_at(output: torch.Tensor, factor: float) -> None:
    """Scale the gradient arriving at ``output`` by ``factor``, on its autograd node.

    Used for in-place products (``a.mul_(b)``, ``a *= b``): lxt's ``divide_gradient`` returns a view
    of its input, which autograd forbids modifying in place, so the factor ``a`` cannot be wrapped.
    Scaling at the product's own node halves both factors' gradients just the same and survives
    later in-place operations on ``output``.

    Args:
        output: the product's output; nothing happens if it has no autograd node.
        factor: the factor applied to the gradient arriving there.
    """
    if output.grad_fn is not None:
        output.grad_fn.register_prehook(_GradientScale(factor, output.output_nr))


def _operands(args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, ...]) -> tuple[Any, Any]:
    first = args[0] if args else kwargs.get("input")
    if len(args) > 1:
        return first, args[1]
    for name in names:
        if name in kwargs:
            return first, kwargs[name]
    return first, None


def _with_operands(
    args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, ...], first: Any, second: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args``/``kwargs`` with the two operands replaced, wherever they were passed."""
    if args and len(args) > 1:
        return (first, second, *args[2:]), kwargs
    kwargs = dict(kwargs)
    for name in names:
        if name in kwargs:
            kwargs[name] = second
    if args:
        return (first, *args[1:]), kwargs
    kwargs["input"] = first
    return args, kwargs


@dataclass(frozen=True)
class ProductRule:
    r"""Element-wise and matrix products of two tensors (``a * b``, ``a @ b``, ``torch.bmm``).

    Two signals: as ``signals`` says (`SignalProducts`: the uniform rule
    \(R_a = R_b = \tfrac12 R\), or the gradient); a factor that is a sigmoid-like activation's
    output is a gate and hands on only its share above its resting value
    (`lfpoptim.rules.gating`). A signal and a parameter: the epsilon rule. A constant factor:
    the gradient (exact, the product is linear in the signal).

    Attributes:
        epsilon: ε of the epsilon rule for products with a parameter (layer scale).
        signals: how a product of two signals shares its reward.
        name: how `lfpoptim.explain` calls the rule.
    """

    epsilon: float = 1e-6
    signals: SignalProducts = "uniform"
    name: str = "product"

    _OTHER = ("other", "mat2")

    def describe(self, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The rule this call gets: ``uniform`` (a gate's share from its rest), ``epsilon`` or ``gradient``.

        Args:
            func: the torch function called.
            args: its positional arguments.
            kwargs: its keyword arguments.

        Returns:
            the rule's description for `lfpoptim.explain`'s table.
        """
        first, second = _operands(args, kwargs, self._OTHER)
        kind = product_kind(first, second)
        gate = ", a gate" if kind == "uniform" and (is_gate(first) or is_gate(second)) else ""
        name = "gradient (two signals)" if kind == "uniform" and self.signals == "gradient" else _KIND_NAMES[kind]
        return name.format(epsilon=self.epsilon) + gate

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        first, second = _operands(args, kwargs, self._OTHER)
        kind = product_kind(first, second)
        inplace = is_inplace_call(func, kwargs)
        trace.consume(args, kwargs, inplace=inplace)
        if kind == "uniform":
            mark_gate(first)
            mark_gate(second)
            if self.signals == "gradient":
                return func(*args, **kwargs)
            if inplace:
                output = func(*args, **kwargs)
                scale_gradient_at(output, 0.5)
                return output
            args, kwargs = _with_operands(
                args, kwargs, self._OTHER, divide_gradient(first, 2), divide_gradient(second, 2)
            )
            return func(*args, **kwargs)
        return mark_output(trace, func(*args, **kwargs), self.epsilon, kind == "parameter")


@dataclass(frozen=True)
class DivisionRule:
    r"""Division ``a / b``.

    By a constant: the gradient (linear in ``a``). By a parameter: the epsilon rule (a layer).
    By a signal: the uniform rule of the reference implementation, \(R_a = R_b = \tfrac12 R\).
    In the gradient formulation \(a \cdot \partial y / \partial a \cdot g = R\) but
    \(b \cdot \partial y / \partial b \cdot g = -R\), so the gradient reaching ``b`` is halved and
    its sign flipped (lxt's ``divide_gradient`` with factor \(-2\)).

    Attributes:
        epsilon: ε of the epsilon rule for a division by a parameter.
        name: how `lfpoptim.explain` calls the rule.
    """

    epsilon: float = 1e-6
    name: str = "division"

    _OTHER = ("other",)

    def describe(self, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The rule this call gets, for `lfpoptim.explain`'s table (arguments as `ProductRule.describe`)."""
        first, second = _operands(args, kwargs, self._OTHER)
        if _is_signal(second):
            return "uniform (AttnLRP)" if _is_signal(first) else "uniform (denominator only)"
        return _KIND_NAMES[product_kind(first, second)].format(epsilon=self.epsilon)

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        first, second = _operands(args, kwargs, self._OTHER)
        inplace = is_inplace_call(func, kwargs)
        trace.consume(args, kwargs, inplace=inplace)
        if _is_signal(second):
            signals = 1 + _is_signal(first)
            if inplace:
                args, kwargs = _with_operands(args, kwargs, self._OTHER, first, divide_gradient(second, -1))
                output = func(*args, **kwargs)
                scale_gradient_at(output, 1.0 / signals)
                return output
            if signals == 2:
                first = divide_gradient(first, 2)
            args, kwargs = _with_operands(args, kwargs, self._OTHER, first, divide_gradient(second, -signals))
            return func(*args, **kwargs)
        # the factors' kind is read after the call, as an in-place division changes ``first``
        return mark_output(trace, func(*args, **kwargs), self.epsilon, product_kind(first, second) == "parameter")


@dataclass(frozen=True)
class AddcmulRule:
    r"""``torch.addcmul(c, a, b, value=v)`` \(= c + v\,a \odot b\), ResMLP's affine map.

    A sum, so its output gets the epsilon rule; the product inside it splits its share of reward
    uniformly when ``a`` and ``b`` are both signals.

    Attributes:
        epsilon: ε of the epsilon rule on the sum.
        name: how `lfpoptim.explain` calls the rule.
    """

    epsilon: float = 1e-6
    name: str = "addcmul"

    def describe(self, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The rule this call gets, for `lfpoptim.explain`'s table (arguments as `ProductRule.describe`)."""
        first, second = self._factors(args, kwargs)
        inner = "uniform product, " if product_kind(first, second) == "uniform" else ""
        return f"{inner}epsilon(ε={self.epsilon:g})"

    _POSITIONS = ((1, "tensor1"), (2, "tensor2"))

    @classmethod
    def _factors(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        first, second = (args[i] if len(args) > i else kwargs.get(name) for i, name in cls._POSITIONS)
        return first, second

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        trace.consume(args, kwargs, inplace=is_inplace_call(func, kwargs))
        if product_kind(*self._factors(args, kwargs)) == "uniform":
            # the factors are only read, never written, so wrapping them is safe even for addcmul_
            args, kwargs = list(args), dict(kwargs)
            for position, name in self._POSITIONS:
                if len(args) > position:
                    args[position] = divide_gradient(args[position], 2)
                else:
                    kwargs[name] = divide_gradient(kwargs[name], 2)
            args = tuple(args)
        return mark_output(trace, func(*args, **kwargs), self.epsilon, True)


@dataclass(frozen=True)
class EinsumRule:
    r"""``torch.einsum(equation, *operands)``: a product of several tensors, multilinear in each.

    With \(k \ge 2\) signals among the operands each signal receives \(R / k\) (the uniform
    rule; its gradient divided by \(k\)); one signal with parameters: the epsilon rule; otherwise
    the gradient.

    Attributes:
        epsilon: ε of the epsilon rule where one signal meets parameters.
        name: how `lfpoptim.explain` calls the rule.
    """

    epsilon: float = 1e-6
    name: str = "einsum"

    @staticmethod
    def _operands(args: tuple[Any, ...]) -> list[Any]:
        operands = list(args[1:])
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        return operands

    def _kind(self, operands: list[Any]) -> tuple[int, bool]:
        signals = sum(_is_signal(operand) for operand in operands)
        return signals, any(is_parameter_like(operand) for operand in operands)

    def describe(self, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The rule this call gets, for `lfpoptim.explain`'s table (arguments as `ProductRule.describe`)."""
        signals, parameters = self._kind(self._operands(args))
        if signals >= 2:
            return f"uniform over {signals} factors (AttnLRP)"
        return _KIND_NAMES["parameter" if signals and parameters else "constant"].format(epsilon=self.epsilon)

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        trace.consume(args, kwargs, inplace=False)
        operands = self._operands(args)
        signals, parameters = self._kind(operands)
        if signals >= 2:
            operands = [divide_gradient(operand, signals) if _is_signal(operand) else operand for operand in operands]
            return func(args[0], *operands, **kwargs)
        return mark_output(trace, func(*args, **kwargs), self.epsilon, signals == 1 and parameters)


_KIND_NAMES: dict[ProductKind, str] = {
    "uniform": "uniform (AttnLRP)",
    "parameter": "epsilon(ε={epsilon:g}) (a parameter factor)",
    "constant": "gradient (a constant factor)",
}
