r"""Gates: a sigmoid-like activation whose output multiplies another signal, \(y = x \odot \sigma(s)\).

Squeeze-and-excitation blocks (EfficientNet, MobileNetV3, RegNetY, SE-ResNet) scale each channel
by a gate \(\sigma(s)\), computed from the same features. The product splits its reward
uniformly (`ProductRule`), so the gate receives \(R_\sigma = \tfrac12 R_y\). The identity
rule would then hand all of \(R_\sigma\) to \(s\), although a gate at rest (\(s = 0\)) already
passes half the signal: \(\sigma(0) = \tfrac12\) is a constant, like a bias, and the reward it
explains does not belong to \(s\). Worse, in the gradient formulation the identity rule's
backward \(\sigma(s) / s\) grows without bound as \(s \to 0\), and the epsilon rule of the layer
below divides the reward by that small \(s\) again: on EfficientNet-B0 the feedback of the first
layers reaches \(10^{19}\) in the first step.

A gate therefore measures its reward from its resting value \(\varphi(0)\):

\[
R_s = \frac{\varphi(s) - \varphi(0)}{\varphi(s)}\, R_\varphi, \qquad
g_s = \frac{\varphi(s) - \varphi(0)}{s}\, g_\varphi ,
\]

the secant slope from 0 to \(s\), bounded wherever \(\varphi\) is Lipschitz (\(\tfrac14\) at
most for the sigmoid), and the remainder \(\varphi(0) / \varphi(s)\, R_\varphi\) stays with
the constant, as a bias's share does. For \(\varphi(0) = 0\) this is the identity rule. An
activation whose output is not used as a gate keeps the plain identity rule, exactly as
`IdentityActivationRule` computes it: which one applies is decided when the forward multiplies
the output with another signal, before any backward runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .activations import WithArguments, without_inplace
from .base import FusionCell, TorchFunction, Trace
from .epsilon import stabilise

_GATE_ATTRIBUTE = "_lfpoptim_gate"


@dataclass
class GateCell:
    """Shared between a gate activation's backward and the product that uses its output.

    Attributes:
        gated (bool): whether a product used the activation's output as a gate (`mark_gate`).
    """

    gated: bool = False


class _GateActivation(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, z: torch.Tensor, phi: Callable[[torch.Tensor], torch.Tensor], fusion: FusionCell, gate: GateCell
    ) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.phi, ctx.fusion, ctx.gate = phi, fusion, gate
        return phi(z)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (z,) = ctx.saved_tensors
        fusion: FusionCell = ctx.fusion
        numerator = ctx.phi(z)
        if ctx.gate.gated:
            numerator = numerator - ctx.phi(torch.zeros((), dtype=z.dtype, device=z.device))
        denominator = stabilise(z, fusion.epsilon) if fusion.fused else torch.where(z == 0, torch.ones_like(z), z)
        return grad * numerator / denominator, None, None, None


def is_gate(factor: Any) -> bool:
    """Whether ``factor`` is the output of a `GateActivationRule`.

    Args:
        factor: an operand of a product.

    Returns:
        whether it carries a `GateCell`.
    """
    return hasattr(factor, _GATE_ATTRIBUTE)


def mark_gate(factor: Any) -> bool:
    """If ``factor`` is the output of a `GateActivationRule`, make that activation a gate; say whether it was.

    Args:
        factor: an operand of a product of two signals.

    Returns:
        whether ``factor`` is such an output (and is now a gate).
    """
    cell = getattr(factor, _GATE_ATTRIBUTE, None)
    if cell is None:
        return False
    cell.gated = True
    return True


@dataclass(frozen=True)
class GateActivationRule:
    r"""Identity rule for a sigmoid-like activation, measured from \(\varphi(0)\) where its output gates a signal.

    For ``F.sigmoid``, ``torch.sigmoid``, ``Tensor.sigmoid`` and ``F.hardsigmoid``. Until a
    product marks the output as a gate (`mark_gate`) the backward is the identity rule's.

    Attributes:
        inplace_position: index of the positional ``inplace`` argument, if the function has one.
        name: how `lfpoptim.explain` calls the rule.
    """

    inplace_position: int | None = None
    name: str = "identity (from φ(0) in a gate)"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        z = args[0]
        if not (isinstance(z, torch.Tensor) and z.requires_grad):
            return func(*args, **kwargs)
        args, kwargs, _ = without_inplace(args, kwargs, self.inplace_position)
        fusion = trace.fuse_activation(z, inplace=False)
        gate = GateCell()
        output = _GateActivation.apply(z, WithArguments(func, args[1:], kwargs), fusion, gate)
        setattr(output, _GATE_ATTRIBUTE, gate)
        trace.record_activation(output, z)
        return output
