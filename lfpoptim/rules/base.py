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

import functools
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

    Attributes:
        epsilon: the producing layer's ε.
        fused: whether the activation applies that layer's stabiliser.
    """

    epsilon: float = 0.0
    fused: bool = False


class Trace(Protocol):
    """The part of the engine's forward trace that rules use."""

    def consume(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], inplace: bool) -> None:
        """Record that an operation without fusion read the tensors in ``args``/``kwargs``.

        Args:
            args: the call's positional arguments.
            kwargs: the call's keyword arguments.
            inplace: whether the call writes into its first argument.
        """

    def mark_stabilised(self, output: torch.Tensor, epsilon: float) -> None:
        """Record that ``output`` is the output z of an epsilon-rule operation.

        Args:
            output: the operation's result.
            epsilon: the ε its stabiliser uses.
        """

    def fuse_activation(self, z: torch.Tensor, inplace: bool) -> FusionCell:
        """Record that an activation reads ``z``; return the cell that says if it is fused.

        Args:
            z: the activation's input.
            inplace: whether the activation writes into ``z``.

        Returns:
            the cell the engine fills in after the forward.
        """

    def record_activation(self, output: torch.Tensor, z: torch.Tensor) -> None:
        """Record that ``output`` is an activation of ``z`` (the identity rule hands ``z`` its reward).

        Args:
            output: the activation's result.
            z: its input.
        """

    def call_module(self, rule: Rule, forward: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a module's ``forward`` under ``rule``, as one operation (see `lfpoptim.rules.ModuleClass`).

        Args:
            rule: the rule of the module's class.
            forward: the module's own forward.
            args: its positional arguments.
            kwargs: its keyword arguments.

        Returns:
            what the rule returns.
        """


class Rule(Protocol):
    """An LFP rule for one or more torch functions.

    Attributes:
        name: the rule's name, as `lfpoptim.explain` reports it.
    """

    name: str

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``func(*args, **kwargs)`` under this rule and return its result.

        Args:
            trace: the forward trace the call runs in.
            func: the intercepted torch function.
            args: its positional arguments.
            kwargs: its keyword arguments.

        Returns:
            what ``func`` returns (with hooks that shape the backward pass).
        """


class OutputGradientHook:
    """Autograd node pre-hook: replaces the gradient arriving at output ``output_nr`` by ``scale(grad)``.

    Subclasses define `scale`; the hook leaves the gradients alone when none arrives at that output.

    Attributes:
        output_nr (int): which output of the node the hook acts on.
    """

    __slots__ = ("output_nr",)

    def __init__(self, output_nr: int) -> None:
        self.output_nr = output_nr

    def scale(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient to hand on in place of ``grad``.

        Args:
            grad: the gradient arriving at output ``output_nr``.

        Returns:
            the replacement gradient.
        """
        raise NotImplementedError

    def __call__(self, grad_outputs: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...] | None:
        grad = grad_outputs[self.output_nr]
        if grad is None:
            return None
        scaled = list(grad_outputs)
        scaled[self.output_nr] = self.scale(grad)
        return tuple(scaled)


def scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-dim CPU tensor, for the element-wise arithmetic of the rules on ``like``.

    Given a Python number, a torch operation wraps it into a tensor anew on every call, which on
    the CPU costs more than the arithmetic on a small tensor (about 6 µs against 4 µs for
    ``x + 1e-6`` on 128x10 values). A 0-dim tensor is used as is and, like a Python number, takes
    the device of the other operand, provided it is not the first operand: torch accepts a CPU
    scalar next to tensors on another device only after a tensor on that device. It is in the
    dtype of ``like`` when that is float32 or float64, so that no operation casts it; half
    precision keeps float64 (those operations compute in float32, and ε = 1e-8 underflows float16).

    Args:
        value: the number.
        like: the tensor the constant will be combined with.

    Returns:
        the same tensor for every call with ``value`` and that dtype; never modify it.
    """
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float64
    return _cpu_scalar(value, dtype)


@functools.cache
def _cpu_scalar(value: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype, device="cpu")  # a CPU scalar works with tensors on any device


def is_inplace_call(func: TorchFunction, kwargs: Mapping[str, Any]) -> bool:
    """Whether a torch function call writes into its first argument.

    ``torch.relu_``, ``Tensor.add_``, ``Tensor.__iadd__`` and ``F.relu(x, inplace=True)`` do;
    dunder methods other than the augmented assignments do not.

    Args:
        func: the torch function called.
        kwargs: its keyword arguments.

    Returns:
        ``True`` for an in-place call.
    """
    if kwargs.get("inplace", False):
        return True
    name = getattr(func, "__name__", "")
    if name.startswith("__i") and name.endswith("__"):
        return True
    return name.endswith("_") and not name.endswith("__")
