"""What a rule is, and what it may ask of the forward trace it runs in.

A rule is the LFP treatment of one elementary operation (``F.linear``, ``F.relu``, ``a + b``).
The engine intercepts every torch function called inside the model's forward and hands the call to
the rule registered for that function; operations without a rule run unchanged, so reward flows
through them as a gradient would (max pooling, reshapes, concatenation, indexing).

Rules never compute feedback themselves: they only shape the single backward pass, in the
"gradient formulation" of LFP (see ``docs/concepts.md``). They talk to the engine through the
small `Trace` protocol below and never import the engine or the optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

TorchFunction = Callable[..., Any]


@dataclass
class FusionCell:
    """Shared between an activation's backward and the engine.

    The engine decides after the forward whether the activation may apply the stabiliser of the
    layer that produced its input (``fused``) or whether that layer's output hook does it.
    ``epsilon`` is the producing layer's ε.
    """

    epsilon: float = 0.0
    fused: bool = False


class Trace(Protocol):
    """The part of the engine's forward trace that rules use."""

    def consume(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], inplace: bool) -> None:
        """Record that an operation without fusion read the tensors in ``args``/``kwargs``."""

    def mark_stabilised(self, output: torch.Tensor, epsilon: float) -> None:
        """Record that ``output`` is the output z of an epsilon-rule operation."""

    def fuse_activation(self, z: torch.Tensor, inplace: bool) -> FusionCell:
        """Record that an activation reads ``z``; return the cell that says if it is fused."""

    def record_activation(self, output: torch.Tensor, z: torch.Tensor) -> None:
        """Record that ``output`` is an activation of ``z`` (the identity rule hands ``z`` its reward)."""


class Rule(Protocol):
    """An LFP rule for one or more torch functions."""

    name: str

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``func(*args, **kwargs)`` under this rule and return its result."""


def is_inplace_call(func: TorchFunction, kwargs: Mapping[str, Any]) -> bool:
    """Whether a torch function call writes into its first argument.

    ``torch.relu_``, ``Tensor.add_``, ``Tensor.__iadd__`` and ``F.relu(x, inplace=True)`` do;
    dunder methods other than the augmented assignments do not.
    """
    if kwargs.get("inplace", False):
        return True
    name = getattr(func, "__name__", "")
    if name.startswith("__i") and name.endswith("__"):
        return True
    return name.endswith("_") and not name.endswith("__")
