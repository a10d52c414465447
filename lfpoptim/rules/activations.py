r"""The identity rule for element-wise activations.

LFP hands an activation's reward to its input unchanged: \(R_z = R_a\) for
\(a = \varphi(z)\). In the gradient formulation (\(g_x = R_x / x\)) the activation's
backward becomes

\[
g_z = \frac{\varphi(z)}{z}\, g_a \quad\text{(unfused)}, \qquad
g_z = \frac{\varphi(z)}{\operatorname{stab}(z)}\, g_a \quad\text{(fused)},
\]

where the fused form also applies the epsilon stabiliser of the layer that produced \(z\), so
that layer needs no hook of its own. Nothing here needs \(\varphi\) to be differentiable: a
step function trains like a ReLU.

ReLU has a cheaper form computed from its output alone (\(\varphi(z)/\operatorname{stab}(z)
= a / (a + \varepsilon)\)), so, like autograd's ReLU, it saves only its output and keeps working
in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .base import FusionCell, TorchFunction, Trace, scalar
from .epsilon import stabilise


class _ReLUIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, inplace: bool, cell: FusionCell) -> torch.Tensor:
        if inplace:
            ctx.mark_dirty(z)
            a = torch.relu_(z)
        else:
            a = torch.relu(z)
        ctx.save_for_backward(a)
        ctx.cell = cell
        return a

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (a,) = ctx.saved_tensors
        cell: FusionCell = ctx.cell
        if cell.fused:  # a / (a + eps), in one temporary
            ratio = a + scalar(cell.epsilon, a)
            torch.div(a, ratio, out=ratio)
            return ratio.mul_(grad), None, None
        return grad * (a > 0).to(grad.dtype), None, None


class _ActivationIdentity(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, z: torch.Tensor, phi: Callable[[torch.Tensor], torch.Tensor], cell: FusionCell
    ) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.phi = phi
        ctx.cell = cell
        return phi(z)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (z,) = ctx.saved_tensors
        cell: FusionCell = ctx.cell
        a = ctx.phi(z)
        denominator = stabilise(z, cell.epsilon) if cell.fused else torch.where(z == 0, 1.0, z)
        return a.div_(denominator).mul_(grad), None, None


@dataclass(frozen=True)
class IdentityActivationRule:
    """Identity rule for an element-wise activation called as ``func(z, *args, **kwargs)``.

    Attributes:
        inplace_position: index of the positional ``inplace`` argument of ``func``, if it has one.
        out_of_place: for an in-place function (``torch.sigmoid_``), its out-of-place form.
        name: how `lfpoptim.explain` calls the rule.
    """

    inplace_position: int | None = None
    out_of_place: TorchFunction | None = None
    name: str = "identity"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        z = args[0]
        if not (isinstance(z, torch.Tensor) and z.requires_grad):
            return func(*args, **kwargs)
        args, kwargs, inplace = without_inplace(args, kwargs, self.inplace_position)
        inplace = inplace or self.out_of_place is not None
        cell = trace.fuse_activation(z, inplace)
        if _is_relu(func) and not args[1:] and not kwargs:
            output = _ReLUIdentity.apply(z, inplace, cell)
        else:
            phi = self.out_of_place or func
            if args[1:] or kwargs:
                phi = WithArguments(phi, args[1:], kwargs)
            output = _ActivationIdentity.apply(z, phi, cell)
        trace.record_activation(output, z)
        return output


def without_inplace(
    args: tuple[Any, ...], kwargs: dict[str, Any], position: int | None
) -> tuple[tuple[Any, ...], dict[str, Any], bool]:
    """An activation's arguments without its ``inplace`` flag, and whether the flag asked for in-place.

    Args:
        args: the positional arguments, ``z`` first.
        kwargs: the keyword arguments (not modified).
        position: index of the positional ``inplace`` argument, if the function has one.

    Returns:
        ``args`` and ``kwargs`` without ``inplace``, and whether it was set.
    """
    inplace = False
    if "inplace" in kwargs:
        kwargs = dict(kwargs)
        inplace = bool(kwargs.pop("inplace"))
    if position is not None and len(args) > position:
        inplace = inplace or bool(args[position])
        args = args[:position] + args[position + 1 :]
    return args, kwargs, inplace


class WithArguments:
    """``phi(z, *args, **kwargs)`` as a function of ``z`` alone (``F.softplus(z, beta, threshold)``)."""

    __slots__ = ("args", "func", "kwargs")

    def __init__(self, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.func, self.args, self.kwargs = func, args, kwargs

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.func(z, *self.args, **self.kwargs)


_RELU_NAMES = frozenset({"relu", "relu_"})


def _is_relu(func: TorchFunction) -> bool:
    return getattr(func, "__name__", "") in _RELU_NAMES
