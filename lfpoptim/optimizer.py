"""``LFPOptimizer``: Layer-wise Feedback Propagation behind the ``torch.optim`` interface.

The class is thin. `LFPOptimizer.step` asks the engine for one LFP pass
(`lfpoptim.engine.lfp_pass`), turns the result into gradients with
`lfpoptim.functional.weight_scale_` and lets the base optimizer step. Everything a scheduler,
a checkpoint or a training loop reads (``param_groups``, ``state``, ``state_dict``) is the base
optimizer's own, shared rather than copied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, get_args

import torch
from torch import nn

from .analysis import warn_zero_parameters
from .base_optimizer import BaseOptimizer, WrappedOptimizer, build_base_optimizer
from .engine import FeedbackReduction, RewardFunction, lfp_pass
from .functional import weight_scale_
from .presets import AUTO, Preset, resolve_rules
from .rules import DropoutMode, RuleMap


@dataclass
class LFPStepResult:
    """What `LFPOptimizer.step` returns, so a loop can log without a second forward.

    Attributes:
        outputs: the model's outputs for the batch (detached).
        reward: the reward at the outputs (detached, shaped like them).
    """

    outputs: torch.Tensor
    reward: torch.Tensor

    @property
    def mean_reward(self) -> float:
        """The reward averaged over every output unit of the batch."""
        return float(self.reward.mean())


class LFPOptimizer(WrappedOptimizer):
    r"""Train ``model`` with Layer-wise Feedback Propagation, stepping any ``torch.optim`` optimizer.

    Each `step` runs the model on a batch with the LFP rules attached, computes the reward,
    propagates it backwards in a single backward pass, sets
    \(\theta.\mathrm{grad} = -F_\theta\) for every trainable parameter and steps the base
    optimizer.

    Args:
        model: the network to train.
        reward_fn: ``reward_fn(outputs, targets)`` returns a reward shaped like ``outputs``; see
            `lfpoptim.rewards`.
        base: the optimizer that applies the update: a ``torch.optim.Optimizer`` class, a
            ``functools.partial`` of one, or a timm optimizer name (``"adamw"``, ``"lamb"``, ...)
            built by ``timm.optim.create_optimizer_v2``.
        epsilon: ε of the epsilon rule; the preset's own when ``None`` (1e-6 for ``default``, 1 for
            ``vit`` as in the reference).
        feedback_reduction: how feedback is scaled before the step.
            ``"normalized"`` (default) averages it over the batch and divides each parameter
            tensor's feedback by that tensor's mean magnitude \(\overline{|\theta|}\): the
            update then has the scale of an SGD step whatever the batch size and the weights'
            scale, so SGD's learning rates carry over, while \(|\theta|\) still decides how
            the update is shared within the tensor. ``"mean"`` only averages over the batch (the
            weight scaling then shrinks steps by the typical weight magnitude, ~0.05 in an MLP,
            so learning rates must be ~20x SGD's). ``"sum"`` sums over the batch as the
            reference implementation does (learning rate divided by the batch size, or
            clipping, needed).
        clip_norm: if given, clip the 2-norm of all feedback to this value before the step.
        dropout: ``"reference"`` or ``"conservative"`` treatment of train-mode dropout, see
            `lfpoptim.rules.DropoutRule`.
        params: what the base optimizer optimizes (parameters or parameter groups); all of the
            model's parameters when ``None``.
        rules: a rule map of one's own instead of a preset (advanced).
        preset: which rules the model's operations get: a name from
            `lfpoptim.presets.list_presets` or ``"auto"`` (chosen by the timm architecture name or
            the module classes, see `lfpoptim.presets.select_preset`).
        strict: raise `lfpoptim.rules.UncoveredOperationError` at the first step if operations on
            the reward's path have no rule (listing them); otherwise warn once
            (`lfpoptim.rules.UncoveredOperationWarning`). `lfpoptim.explain` shows the whole table.
        **base_kwargs: passed to ``base`` (``lr``, ``momentum``, ``weight_decay``, ...).

    Example:
        >>> opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9)
        >>> for inputs, targets in loader:
        ...     result = opt.step(inputs, targets)
    """

    def __init__(
        self,
        model: nn.Module,
        reward_fn: RewardFunction,
        base: BaseOptimizer = torch.optim.SGD,
        *,
        epsilon: float | None = None,
        feedback_reduction: FeedbackReduction = "normalized",
        clip_norm: float | None = None,
        dropout: DropoutMode = "reference",
        params: Iterable[Any] | None = None,
        rules: RuleMap | None = None,
        preset: str | Preset = AUTO,
        strict: bool = False,
        **base_kwargs: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(reward_fn):
            raise TypeError(
                f"reward_fn must be callable as reward_fn(outputs, targets), got {type(reward_fn).__name__}"
            )
        if feedback_reduction not in get_args(FeedbackReduction):
            raise ValueError(
                f"feedback_reduction must be one of {get_args(FeedbackReduction)}, got {feedback_reduction!r}"
            )
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
        if dropout not in get_args(DropoutMode):
            raise ValueError(f"dropout must be 'reference' or 'conservative', got {dropout!r}")
        resolved = resolve_rules(model, preset, epsilon=epsilon, dropout=dropout, rules=rules, strict=strict)
        super().__init__(build_base_optimizer(base, model, params, base_kwargs))
        warn_zero_parameters(model, self._trainable())
        self.model = model
        self.reward_fn = reward_fn
        self.preset = resolved.preset
        self.epsilon = resolved.epsilon
        self.feedback_reduction: FeedbackReduction = feedback_reduction
        self.clip_norm = clip_norm
        self.rules = resolved.rules

    def _trainable(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def step(self, inputs: Any, targets: Any = None) -> LFPStepResult:  # type: ignore[override]
        """One LFP training step on a batch.

        Args:
            inputs: passed to the model as ``model(inputs)``.
            targets: passed to the reward as ``reward_fn(outputs, targets)``.

        Returns:
            the outputs and the reward, for logging.

        If anything raises (the forward, the reward, a NaN reward, the backward), the model, the
        parameters, their ``.grad`` and the optimizer state are left as they were.
        """
        params = self._trainable()
        result = lfp_pass(
            self.model, inputs, targets, self.reward_fn, params, rules=self.rules, reduction=self.feedback_reduction
        )
        weight_scale_(result.grads, params, sign=-1.0, normalize=self.feedback_reduction == "normalized")
        for param, grad in zip(params, result.grads, strict=True):
            param.grad = grad
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
        self.base.step()
        return LFPStepResult(outputs=result.outputs, reward=result.reward)

    def feedback(self, inputs: Any, targets: Any = None) -> dict[str, torch.Tensor]:
        r"""The feedback \(F_\theta\) of every trainable parameter of the model, by name.

        Computed with this optimizer's settings (ε, reduction, dropout), changing nothing: not
        the parameters, not their ``.grad``, not the optimizer state, not the model's buffers.
        Note that a model in ``train()`` mode still draws new dropout masks.
        """
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        buffers = [buffer.detach().clone() for buffer in self.model.buffers()]
        try:
            result = lfp_pass(
                self.model, inputs, targets, self.reward_fn, params, rules=self.rules, reduction=self.feedback_reduction
            )
        finally:
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                    buffer.copy_(saved)
        weight_scale_(result.grads, params, sign=1.0, normalize=self.feedback_reduction == "normalized")
        return {name: grad for (name, _), grad in zip(named, result.grads, strict=True)}

    def __repr__(self) -> str:
        return (
            f"LFPOptimizer(base={type(self.base).__name__}, "
            f"preset={self.preset.name if self.preset else None!r}, epsilon={self.epsilon}, "
            f"feedback_reduction={self.feedback_reduction!r}, clip_norm={self.clip_norm})\n{self.base!r}"
        )
