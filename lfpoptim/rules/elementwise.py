r"""Element-wise rescalings that are not activations of a layer: powers and vector normalisation.

- **Power** \(y = z^c\) with a constant exponent (StarReLU's \(\operatorname{relu}(z)^2\)): an
  element-wise non-linearity of one signal, so the identity rule, \(R_z = R_y\)
  (`IdentityActivationRule`). Plain gradients would hand on \(c\, R_y\).
- **Normalisation** \(y = z / \max(\lVert z \rVert_p, \epsilon)\) (``F.normalize``, cosine
  attention): the identity rule of AttnLRP for normalisations (Proposition 3.4; lxt's
  ``normalize`` rule), \(R_z = R_y\). In the gradient formulation the norm is a constant of the
  backward pass: \(g_z = g_y / \lVert z \rVert_p\).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .activations import IdentityActivationRule
from .base import TorchFunction, Trace


@dataclass(frozen=True)
class PowerRule:
    """Identity rule for ``z ** c``, ``torch.pow(z, c)`` and ``torch.square(z)`` with a constant exponent.

    A tensor exponent that requires a gradient is not an activation: such calls run unchanged,
    reported as uncovered by `lfpoptim.explain`.

    Attributes:
        name: how `lfpoptim.explain` calls the rule.
    """

    name: str = "identity"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        exponent = args[1] if len(args) > 1 else kwargs.get("exponent")
        if isinstance(exponent, torch.Tensor) and exponent.requires_grad:
            trace.consume(args, kwargs, inplace=False)
            return func(*args, **kwargs)
        return _IDENTITY(trace, func, args, kwargs)


_IDENTITY = IdentityActivationRule()


@dataclass(frozen=True)
class NormalizeRule:
    r"""AttnLRP's identity rule for ``F.normalize``: the norm is held constant in the backward pass.

    Attributes:
        name: how `lfpoptim.explain` calls the rule.
    """

    name: str = "identity (normalisation)"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        trace.consume(args, kwargs, inplace=False)
        names = ("input", "p", "dim", "eps")
        bound = {"p": 2.0, "dim": 1, "eps": 1e-12, **dict(zip(names, args, strict=False)), **kwargs}
        z = bound["input"]
        if not (isinstance(z, torch.Tensor) and z.requires_grad) or bound.get("out") is not None:
            return func(*args, **kwargs)
        norm = torch.linalg.vector_norm(z.detach(), ord=bound["p"], dim=bound["dim"], keepdim=True)
        return z / norm.clamp_min(bound["eps"])
