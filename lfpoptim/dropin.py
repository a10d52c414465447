r"""Drop-in LFP: an unchanged SGD training loop trains with LFP when only the optimizer line changes.

For the paper's default reward, `lfpoptim.rewards.SoftmaxLossReward`
\(R = y \odot (t - \operatorname{softmax}(y))\), the gradient that cross-entropy hands to the
logits is \(\partial L / \partial y = \operatorname{softmax}(y) - t = -R / y\): exactly minus
LFP's seed, up to the logits' stabiliser. So while the LFP rules are attached to the model, the
user's own ``loss = F.cross_entropy(model(x), t); loss.backward()`` *is* the LFP backward pass
(the stabiliser of the logits is applied by a hook), and ``theta.grad`` holds
\(-J_\theta^\top n\). `DropInLFPOptimizer.step` multiplies in \(|\theta|\) and steps
the base optimizer. The same identity holds for ``binary_cross_entropy_with_logits`` with
`lfpoptim.rewards.SigmoidLossReward` / `lfpoptim.rewards.BinarySigmoidLossReward`.

The loss's reduction is the batch reduction (``reduction="mean"`` averages the feedback over the
batch, ``"sum"`` sums it); ``feedback_scaling`` then scales each parameter tensor's feedback by
one positive number, as `lfpoptim.LFPOptimizer`'s ``feedback_reduction`` does.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from types import MethodType
from typing import Any, get_args

import torch
from torch import nn

from .base_optimizer import BaseOptimizer, WrappedOptimizer, build_base_optimizer
from .engine import ForwardTrace, output_tensor
from .functional import FeedbackScaling, weight_scale_
from .presets import AUTO, Preset, resolve_rules
from .rules import DropoutMode, RuleMap
from .zero_init import ZeroParameters, handle_zero_parameters

EXACT_LOSSES = "cross_entropy (SoftmaxLossReward) or binary_cross_entropy_with_logits (SigmoidLossReward)"


def is_exact_loss_gradient(outputs: torch.Tensor, grad: torch.Tensor) -> bool:
    r"""Whether ``grad`` at ``outputs`` looks like the gradient of one of the exact losses.

    Softmax cross-entropy (with hard, soft or smoothed targets, any reduction, ignored targets)
    hands each sample a gradient that sums to zero over the classes: dimension 1 as
    ``F.cross_entropy`` takes them, or the last one as a language model's (batch, tokens,
    vocabulary) logits have them. Binary cross-entropy with logits hands
    \((\sigma(y) - t) / s\) with 0/1 targets \(t\) and a scale \(s\) of 1 (sum), the batch
    size or the number of outputs (mean). Soft BCE targets are not recognised.

    Args:
        outputs: the model's outputs (detached).
        grad: the gradient the loss's ``backward()`` hands to ``outputs``.

    Returns:
        ``True`` also for an empty or all-zero gradient, which carries nothing to check.
    """
    if grad.numel() == 0:  # an empty batch: nothing to check, as nothing reaches the parameters
        return True
    scale = grad.abs().amax()
    if not bool(scale > 0):
        return True
    for classes in {1, outputs.dim() - 1} if outputs.dim() >= 2 else ():
        if bool((grad.sum(dim=classes).abs() <= 1e-5 * scale * outputs.shape[classes]).all()):
            return True
    probabilities = torch.sigmoid(outputs)
    for divisor in {1, outputs.shape[0], outputs.numel()}:
        targets = probabilities - grad * divisor
        if bool((torch.minimum(targets.abs(), (targets - 1).abs()) <= 1e-4).all()):
            return True
    return False


def _forward_with_rules(optimizer: DropInLFPOptimizer) -> Callable[..., Any]:
    """The function that, bound to the model, replaces its ``forward`` while ``optimizer`` is attached.

    Bound to the model rather than to the optimizer, so that a deep copy of the model (an EMA copy,
    say) is bound to the copy, and runs the copy's own, untraced forward. It carries the class's
    ``forward`` as ``__wrapped__``, so ``inspect.signature(model.forward)`` still names the model's
    arguments (Hugging Face's ``Trainer`` keeps only the batch columns the signature names).
    """

    def forward(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if model is not optimizer.model:  # a copy of the model
            return type(model).forward(model, *args, **kwargs)
        return optimizer._traced_forward(*args, **kwargs)

    return functools.update_wrapper(forward, type(optimizer.model).forward)


class DropInLFPOptimizer(WrappedOptimizer):
    r"""LFP for an unchanged training loop: ``zero_grad()``, forward, loss, ``backward()``, ``step()``.

    On construction the LFP rules are attached to ``model``: every forward run with gradients
    enabled is traced by the LFP engine, so the loss's ``backward()`` computes LFP's
    \(J_\theta^\top n\). `step` (the plain ``torch.optim`` signature, closure included)
    turns it into \(-F_\theta = -|\theta| \odot J_\theta^\top n\) and steps the base optimizer.
    Forwards under ``torch.no_grad()`` (evaluation) are not traced at all, and neither are
    forwards inside another LFP pass (an ``LFPOptimizer`` on the same model), which traces them
    itself.

    The rules are attached by replacing ``model.forward`` with a wrapper (an instance attribute;
    no hook is registered), which runs the class's forward inside the LFP trace and leaves the
    trace however the forward ends, ``KeyboardInterrupt`` included. `close` (or leaving a
    ``with`` block) removes the wrapper and leaves the model's forward as it was.

    A model may return its logits or a Hugging Face ``ModelOutput`` with ``.logits``, and may
    compute its own loss from ``labels=`` inside its forward (as Hugging Face models do for their
    ``Trainer``): the loss's gradient at the logits is the reward's seed either way.

    Args:
        model: the network; its ``forward`` is wrapped while the rules are attached.
        base: the optimizer that applies the update: a class, a ``functools.partial``, a timm
            name, or an optimizer that is already built (``DropInLFPOptimizer(model,
            base=optimizer)`` after any factory), used with its own parameter groups, state, hooks
            and schedulers.
        epsilon: ε of the epsilon rule; the preset's own when ``None``.
        feedback_scaling: the positive number each parameter tensor's feedback is multiplied by
            (`lfpoptim.functional.FeedbackScaling`): ``"grad_norm"`` (default) gives each
            tensor's update the 2-norm of the loss's gradient reaching it, as
            ``LFPOptimizer``'s default does, so that SGD's learning rates carry over;
            ``"mean_magnitude"`` divides by the tensor's mean \(|\theta|\); ``"none"`` keeps
            the loss's own scale. The batch reduction is the loss's own.
        strict: raise instead of warning when the gradient reaching the outputs is not that of
            cross-entropy or BCE-with-logits, and when operations on the reward's path have no rule
            (`lfpoptim.rules.UncoveredOperationError`, raised by the first ``backward()``).
        dropout: ``"reference"`` or ``"conservative"`` treatment of train-mode dropout.
        params: what the base optimizer optimizes; all of the model's parameters when ``None``.
        rules: a rule map of one's own instead of a preset (advanced).
        preset: a name from `lfpoptim.presets.list_presets`, or ``"auto"`` to choose by model.
        zero_parameters: ``"fill"`` (default) or ``"keep"`` all-zero trainable tensors, see
            `lfpoptim.zero_init`.
        **base_kwargs: passed to ``base``.

    Attributes:
        model (nn.Module): the network the rules are attached to.
        preset (Preset | None): the preset the rules came from (``None`` for a rule map of one's own).
        epsilon (float | None): the ε the rules were built with (``None`` for a rule map of one's own).
        feedback_scaling (FeedbackScaling): how each parameter tensor's feedback is scaled.
        strict (bool): whether a gradient of another loss, or an operation without a rule, raises.
        rules (lfpoptim.rules.CoverageCheck): the rule map the traced forwards run under.
        base: the optimizer that applies the update.

    Example:
        >>> optimizer = DropInLFPOptimizer(model, lr=0.1, momentum=0.9)  # was: torch.optim.SGD(...)
        >>> for x, t in loader:
        ...     optimizer.zero_grad()
        ...     F.cross_entropy(model(x), t).backward()
        ...     optimizer.step()
    """

    def __init__(
        self,
        model: nn.Module,
        base: BaseOptimizer = torch.optim.SGD,
        *,
        epsilon: float | None = None,
        feedback_scaling: FeedbackScaling = "grad_norm",
        strict: bool = False,
        dropout: DropoutMode = "reference",
        params: Iterable[Any] | None = None,
        rules: RuleMap | None = None,
        preset: str | Preset = AUTO,
        zero_parameters: ZeroParameters = "fill",
        **base_kwargs: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if dropout not in get_args(DropoutMode):
            raise ValueError(f"dropout must be 'reference' or 'conservative', got {dropout!r}")
        if feedback_scaling not in get_args(FeedbackScaling):
            raise ValueError(f"feedback_scaling must be one of {get_args(FeedbackScaling)}, got {feedback_scaling!r}")
        resolved = resolve_rules(model, preset, epsilon=epsilon, dropout=dropout, rules=rules, strict=strict)
        super().__init__(build_base_optimizer(base, model, params, base_kwargs))
        trainable = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        handle_zero_parameters(model, trainable, zero_parameters)
        self.model = model
        self.preset = resolved.preset
        self.epsilon = resolved.epsilon
        self.feedback_scaling: FeedbackScaling = feedback_scaling
        self.strict = strict
        self.rules = resolved.rules
        self._warned = False
        self._wrapper: Callable[..., Any] | None = None
        self._inner_forward: Callable[..., Any] | None = None
        self.attach()

    # -- attaching the rules to the model ----------------------------------------------------------
    @property
    def attached(self) -> bool:
        """Whether the rules are attached to the model."""
        return self._wrapper is not None

    def attach(self) -> None:
        """Attach the LFP rules to the model (done on construction; again after `close`).

        ``model.forward`` becomes a wrapper. A ``forward`` the model already had as an instance
        attribute is wrapped too, and put back by `close`.
        """
        if self.attached:
            return
        self._inner_forward = vars(self.model).get("forward")
        self._wrapper = MethodType(_forward_with_rules(self), self.model)
        self.model.forward = self._wrapper

    def close(self) -> None:
        """Detach the rules: the model is exactly as it was before this optimizer was built.

        Raises:
            RuntimeError: if ``model.forward`` was replaced again after this optimizer wrapped it
                (by another ``DropInLFPOptimizer``, say): close that one first.
        """
        if self._wrapper is None:
            return
        if vars(self.model).get("forward") is not self._wrapper:
            raise RuntimeError(
                "model.forward was replaced after this DropInLFPOptimizer attached its rules (by another "
                "DropInLFPOptimizer?); close the one attached last first"
            )
        if self._inner_forward is None:
            del self.model.forward
        else:
            self.model.forward = self._inner_forward
        self._wrapper = self._inner_forward = None

    detach = close
    """An alias of `close`."""

    def __enter__(self) -> DropInLFPOptimizer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _traced_forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's forward, traced by the LFP engine when gradients are enabled."""
        inner = self._inner_forward
        if inner is None:
            inner = type(self.model).forward.__get__(self.model)
        if not torch.is_grad_enabled() or ForwardTrace.active():
            return inner(*args, **kwargs)
        trace = ForwardTrace(self.rules, self.model)
        try:
            with trace:
                output = inner(*args, **kwargs)
            logits = output_tensor(output)
            if isinstance(logits, torch.Tensor) and logits.requires_grad:
                trace.finalize(logits, seeded=False)
                logits.register_hook(self._check_loss_gradient(logits.detach()))
        finally:
            trace.clear()
        return output

    def _check_loss_gradient(self, outputs: torch.Tensor) -> Callable[[torch.Tensor], None]:
        def check(grad: torch.Tensor) -> None:
            if self._warned and not self.strict:
                return
            if is_exact_loss_gradient(outputs, grad):
                return
            message = (
                f"the gradient reaching the model's outputs is not that of {EXACT_LOSSES}: "
                "DropInLFPOptimizer uses this loss's gradient as the reward's seed at the outputs "
                "(reward = -outputs * grad) and the LFP rules below them; use LFPOptimizer with a reward "
                "for exact LFP"
            )
            if self.strict:
                raise ValueError(message)
            self._warned = True
            warnings.warn(message, stacklevel=2)

        return check

    # -- the torch.optim face ------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        r"""Turn the gradients of the last ``backward()`` into \(-F_\theta\) and step the base optimizer.

        Args:
            closure: re-evaluates the model and returns the loss, as for any ``torch.optim`` optimizer.

        Returns:
            the closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with_grad = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        weight_scale_([p.grad for p in with_grad], with_grad, sign=1.0, scaling=self.feedback_scaling)
        self.base.step()
        return loss

    def __repr__(self) -> str:
        return (
            f"DropInLFPOptimizer(base={type(self.base).__name__}, epsilon={self.epsilon}, "
            f"feedback_scaling={self.feedback_scaling!r}, attached={self.attached})\n{self.base!r}"
        )
