r"""The epsilon rule for layers with (and without) parameters.

For an operation \(z = f(a; \theta)\) that is linear in its input (Linear, ConvNd, the affine
part of the norms, average pooling, sums), epsilon-LFP hands reward \(R_z\) down as

\[
n = \frac{R_z}{\operatorname{stab}(z)}, \qquad
\operatorname{stab}(z) = z + \varepsilon\,(\operatorname{sign}(z) + [z = 0]),

R_a = a \odot J_a^\top n, \qquad F_\theta = |\theta| \odot J_\theta^\top n .
\]

In the gradient formulation the engine backpropagates \(g_x = R_x / x\). Then
\(J_a^\top n\) is the gradient arriving at the input and \(J_\theta^\top n\) is
``theta.grad``, provided the gradient arriving at \(z\) is multiplied by
\(z / \operatorname{stab}(z) = |z| / (|z| + \varepsilon)\). That factor is this rule's only
work: the operation itself runs unchanged, its output is handed to the engine, and the engine
applies the factor either through the following activation (fused) or through a hook on the
output's autograd node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import TorchFunction, Trace, is_inplace_call, scalar


def stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    r"""\(\operatorname{stab}(z) = z + \varepsilon(\operatorname{sign}(z) + [z = 0])\).

    Moves every entry of ``z`` away from zero by ``epsilon``, keeping its sign (zeros become
    ``+epsilon``).

    Args:
        z: the operation's output.
        epsilon: the stabiliser ε.

    Returns:
        a new tensor shaped like ``z``.
    """
    # |z| + eps with the sign of z; adding 0.0 first turns -0.0 into +0.0, which gets +eps. The
    # 0-dim constants stay second operands: torch takes a CPU scalar there for tensors on any device
    return z.abs().add_(scalar(epsilon, z)).copysign_(z + scalar(0.0, z))


def stabiliser_ratio(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    r"""\(z / \operatorname{stab}(z) = |z| / (|z| + \varepsilon)\), written without a division by zero.

    Args:
        z: the operation's output.
        epsilon: the stabiliser ε.

    Returns:
        a new tensor shaped like ``z``, with entries in \([0, 1)\).
    """
    # |z| / (|z| + eps) directly: the form 1 - eps / (|z| + eps) needs 1 / eps, which overflows
    # float16 (and so turned ratios of zeros into -inf) for any eps below 1.5e-5
    magnitude = z.abs()
    return magnitude.div_(magnitude + scalar(epsilon, z))


def mark_output(trace: Trace, output: Any, epsilon: float, applies: bool = True) -> Any:
    """Hand ``output`` to ``trace`` as the output z of an epsilon-rule operation, and return it.

    Args:
        trace: the forward trace the operation ran in.
        output: what the operation returned; only a tensor that carries a gradient is marked.
        epsilon: the ε of its stabiliser.
        applies: whether the epsilon rule applies to this call at all (``False``: nothing is marked).

    Returns:
        ``output``, unchanged.
    """
    if applies and isinstance(output, torch.Tensor) and output.requires_grad:
        trace.mark_stabilised(output, epsilon)
    return output


@dataclass(frozen=True)
class EpsilonRule:
    """Epsilon rule for an operation whose output is a (weighted) sum of its inputs.

    Attributes:
        epsilon: the stabiliser ε of this operation.
        name: how `lfpoptim.explain` and error messages call the rule.
    """

    epsilon: float = 1e-6
    name: str = "epsilon"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        trace.consume(args, kwargs, inplace=is_inplace_call(func, kwargs))
        return mark_output(trace, func(*args, **kwargs), self.epsilon)
