r"""Which operations on the reward's path have a rule, and checking that every one does.

An operation without a rule runs unchanged, so reward moves through it as a gradient would. That
is LFP's rule for operations that only move, copy, select or cast values (reshapes,
concatenation, indexing, padding; max pooling is winner-takes-all): `passes_reward` lists them.
Any other operation without a rule (an ``exp``, a ``sqrt``, a norm computed by hand) is
*uncovered*: the reward crossing it is shaped by its derivative, which no LFP rule asked for.

`CoverageCheck` is a rule map that watches for uncovered operations while the model runs: it
warns once (or, when strict, raises) listing every uncovered operation the forward used, as
soon as the backward pass reaches the first of them, so that the whole forward is known; the
step that raises changes nothing. Operations whose output needs no gradient (shape queries,
comparisons, ``argmax``) and operations on constants are ignored: no reward crosses them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from .base import Rule, TorchFunction, Trace, is_inplace_call

GRADIENT_OPERATIONS: frozenset[str] = frozenset(
    {
        # reshapes and views
        "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose",
        "transpose_", "t", "swapaxes", "swapdims", "movedim", "moveaxis", "contiguous", "clone",
        "expand", "expand_as", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "flip", "roll",
        "narrow", "unfold", "as_strided", "__get__",
        # copies and casts
        "to", "type", "type_as", "float", "double", "half", "bfloat16", "detach", "repeat", "tile",
        "repeat_interleave",
        # selection
        "__getitem__", "__setitem__", "select", "index_select", "gather", "take_along_dim",
        "masked_fill", "masked_fill_", "where", "embedding",
        # joining and splitting
        "cat", "concat", "concatenate", "stack", "hstack", "vstack", "split", "split_with_sizes",
        "chunk", "unbind", "tensor_split",
        # padding and pixel rearrangement
        "pad", "pixel_shuffle", "pixel_unshuffle",
        # winner takes all
        "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
        "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
        "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
        "adaptive_max_pool3d_with_indices", "max", "amax",
        # sign
        "neg", "negative", "__neg__",
        # norms: homogeneous of degree one, so x . grad f(x) = f(x) (Euler) and the gradient conserves reward
        "norm", "vector_norm", "linalg_vector_norm",
    }
)  # fmt: skip
"""Names of torch functions through which LFP moves reward as a gradient would, by design."""

UNCOVERED_EXAMPLES = 10
"""How many uncovered operations a warning or an error spells out before summarising the rest."""


def operation_name(func: TorchFunction) -> str:
    """A readable name for a torch function: ``conv2d``, ``Tensor.mul``, ``scaled_dot_product_attention``.

    Args:
        func: the torch function or ``Tensor`` method.

    Returns:
        its ``__name__`` (its ``repr`` if it has none), prefixed with ``Tensor.`` for a ``Tensor`` method.
    """
    name = getattr(func, "__name__", None) or repr(func)
    owner = getattr(func, "__objclass__", None) or getattr(func, "__self__", None)
    if owner is torch.Tensor or getattr(func, "__qualname__", "").startswith(("Tensor.", "TensorBase.")):
        return f"Tensor.{name}"
    return name


def passes_reward(func: TorchFunction) -> bool:
    """Whether ``func`` only moves, copies, selects or casts values (`GRADIENT_OPERATIONS`).

    Args:
        func: the torch function.

    Returns:
        whether its ``__name__`` is in `GRADIENT_OPERATIONS`.
    """
    return getattr(func, "__name__", "") in GRADIENT_OPERATIONS


def _tensors(values: Any) -> list[torch.Tensor]:
    found = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(item for item in value if isinstance(item, torch.Tensor))
    return found


def reads_gradient_tensors(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """Whether any tensor among the arguments requires a gradient (the call may be on the reward's path).

    Args:
        args: the call's positional arguments; tensors inside lists and tuples count.
        kwargs: the call's keyword arguments.

    Returns:
        whether any of those tensors requires a gradient.
    """
    return any(tensor.requires_grad for tensor in _tensors((*args, *kwargs.values())))


def output_requires_grad(output: Any) -> bool:
    """Whether reward can flow back through ``output`` (a tensor, or a tuple/list of tensors).

    Args:
        output: what a torch function returned.

    Returns:
        whether any tensor in it requires a gradient.
    """
    return any(tensor.requires_grad for tensor in _tensors((output,)))


def format_uncovered(counts: Mapping[str, int]) -> str:
    """``"Tensor.exp (x2), sqrt"``: operation names with how often the forward called them.

    Args:
        counts: how often each operation was called, by `operation_name`.

    Returns:
        the first `UNCOVERED_EXAMPLES` names with their counts, and how many more there are.
    """
    names = [f"{name} (x{count})" if count > 1 else name for name, count in counts.items()]
    shown = ", ".join(names[:UNCOVERED_EXAMPLES])
    if len(names) > UNCOVERED_EXAMPLES:
        shown += f" and {len(names) - UNCOVERED_EXAMPLES} more"
    return shown


class UncoveredOperationError(RuntimeError):
    """An operation on the reward's path has no LFP rule (raised by a strict optimizer)."""


class UncoveredOperationWarning(UserWarning):
    """An operation on the reward's path has no LFP rule; its gradient moves the reward."""


class _Report:
    """Autograd node pre-hook: report the uncovered operations once the backward pass reaches one."""

    __slots__ = ("check",)

    def __init__(self, check: CoverageCheck) -> None:
        self.check = check

    def __call__(self, grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
        self.check.report()


class _Probe:
    """The rule `CoverageCheck` hands out for a function that has none: runs it and notes it."""

    name = "none"

    def __init__(self, check: CoverageCheck) -> None:
        self.check = check

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not reads_gradient_tensors(args, kwargs):
            return func(*args, **kwargs)
        inplace = is_inplace_call(func, kwargs)
        if inplace:
            trace.consume(args, kwargs, inplace=True)
        output = func(*args, **kwargs)
        if output_requires_grad(output):
            if not inplace:
                trace.consume(args, kwargs, inplace=False)
            self.check.found(func, output)
        return output


class CoverageCheck(dict):
    """A rule map that reports the operations on the reward's path that have no rule.

    It holds the same rules as the map it was built from; the engine's ``rules.get(func)`` also
    hands out a probe for functions that have no rule and are not in `GRADIENT_OPERATIONS`.
    The probe runs the function unchanged and notes it if it read a tensor that requires a
    gradient and produced one. When the backward pass reaches a noted operation, all of them are
    reported: `UncoveredOperationError` if ``strict``, else one `UncoveredOperationWarning`,
    after which the check stops probing.

    Args:
        rules: the rule map to check.
        strict: raise instead of warning.
        describe: names the rule map in messages (``"preset 'vit'"``).

    Attributes:
        strict (bool): raise instead of warning.
        describe (str): names the rule map in messages (``"these rules"`` when none was given).
        uncovered (dict[str, int]): the uncovered operations noted since the last report, by
            `operation_name`, with how often each was called.
        reported (bool): whether the warning was given; a non-strict check then stops probing.
    """

    def __init__(self, rules: Mapping[TorchFunction, Rule], *, strict: bool = False, describe: str = "") -> None:
        super().__init__(rules)
        self.strict = strict
        self.describe = describe or "these rules"
        self.uncovered: dict[str, int] = {}
        self.reported = False
        self._noted: list[tuple[str, Any, Any]] = []  # (name, autograd node, its hook's handle)
        self._probe = _Probe(self)
        self._verdicts: dict[Any, Rule | None] = {}

    def get(self, func: TorchFunction, default: Any = None) -> Any:  # type: ignore[override]
        """The rule for ``func``; a probe if it has none and may be uncovered; else ``default``.

        Args:
            func: the torch function about to run.
            default: what to return when no rule applies and ``func`` needs no probe.

        Returns:
            the rule, the probe, or ``default``.
        """
        rule = super().get(func)
        if rule is not None:
            return rule
        if self.reported and not self.strict:
            return default
        try:
            verdict = self._verdicts.get(func, self)
        except TypeError:  # an unhashable callable
            return default if passes_reward(func) else self._probe
        if verdict is self:
            verdict = None if passes_reward(func) else self._probe
            self._verdicts[func] = verdict
        return default if verdict is None else verdict

    def found(self, func: TorchFunction, output: Any) -> None:
        """Note that ``func`` produced ``output`` with no rule; report when the backward reaches it.

        Args:
            func: the uncovered torch function.
            output: what it returned (a tensor, or a tuple/list of tensors).
        """
        name = operation_name(func)
        self.uncovered[name] = self.uncovered.get(name, 0) + 1
        for tensor in _tensors((output,)):
            if tensor.grad_fn is not None:
                self._noted.append((name, tensor.grad_fn, tensor.grad_fn.register_prehook(_Report(self))))

    def forget_after(self, output: torch.Tensor) -> None:
        """Forget the uncovered operations of this forward that ``output`` does not depend on.

        Called by the engine once a forward is over, with the tensor the reward starts from. A
        model that computes its own loss inside its forward (Hugging Face models given
        ``labels=``) runs the loss's operations under the rules too; in drop-in mode the loss's
        gradient at ``output`` (the logits) is the reward's seed, so what happens above the logits
        is not on the reward's path, nor is anything else the output does not depend on. Walks
        the autograd graph below ``output`` once, and only when an uncovered operation was noted.

        Args:
            output: the tensor the reward starts from.
        """
        if not self._noted:
            return
        below: set[Any] = set()
        stack = [output.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in below:
                continue
            below.add(node)
            stack.extend(child for child, _ in node.next_functions)
        for name, node, handle in self._noted:
            if node not in below:
                handle.remove()
                self.uncovered[name] -= 1
                if not self.uncovered[name]:
                    del self.uncovered[name]
        self._noted = []

    def message(self) -> str:
        """What the error (strict) or the warning says: the uncovered operations, and what happens next."""
        found = (
            f"{len(self.uncovered)} operation(s) on the reward's path have no LFP rule under {self.describe}, "
            f"so reward crosses them as a gradient would: {format_uncovered(self.uncovered)}. "
        )
        where = "lfpoptim.explain(model, inputs) shows where they are."
        cover = "choose another preset or add rules for them (rules=...)"
        if self.strict:
            return (
                f"{found}No parameter was updated. {where} To cover them, {cover}; to train with their gradients "
                "anyway, build the optimizer with strict=False (it then warns once)"
            )
        return (
            f"{found}Training goes on that way; this warning is shown once. {where} To cover them, {cover}; "
            "strict=True makes this an error"
        )

    def report(self) -> None:
        """Raise or warn about the uncovered operations noted so far (once per forward).

        Raises:
            UncoveredOperationError: the check is strict and an uncovered operation was noted.
        """
        if not self.uncovered or (self.reported and not self.strict):
            return
        message = self.message()
        self.uncovered = {}
        self._noted = []
        if self.strict:
            raise UncoveredOperationError(message)
        self.reported = True
        warnings.warn(message, UncoveredOperationWarning, stacklevel=2)
