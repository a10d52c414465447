r"""Dropout in train mode.

With the mask \(m\) and keep probability \(q = 1 - p\), dropout computes
\(y = m \odot x / q\). Backpropagating \(g = R / x\) through it conserves reward
(\(R_x = R_y\)), which is what an identity rule would do. The reference implementation
(``lfprop``) instead runs autograd on the reward itself, so a kept unit's reward arrives scaled by
\(1/q\). ``mode="reference"`` reproduces that (the default, so that results match the
reference); ``mode="conservative"`` keeps the reward's sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .base import TorchFunction, Trace, is_inplace_call

DropoutMode = Literal["reference", "conservative"]


@dataclass(frozen=True)
class DropoutRule:
    """Rule for ``F.dropout`` and its 1d/2d/3d forms.

    Attributes:
        mode: ``"reference"`` scales the reward of kept units by ``1 / (1 - p)`` as ``lfprop``
            does; ``"conservative"`` lets the reward pass with its sum unchanged.
        name: the rule's name, as `lfpoptim.explain` reports it.
    """

    mode: DropoutMode = "reference"
    name: str = "dropout"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        trace.consume(args, kwargs, inplace=is_inplace_call(func, kwargs))
        output = func(*args, **kwargs)
        p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
        training = kwargs.get("training", args[2] if len(args) > 2 else True)
        if self.mode == "reference" and training and 0 < p < 1 and output.requires_grad:
            scale = 1.0 / (1.0 - p)
            output.register_hook(lambda grad: grad * scale)
        return output
