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
from typing import TYPE_CHECKING, Any, Literal, get_args, overload

import torch
from torch import nn

from .base_optimizer import BaseOptimizer, WrappedOptimizer, build_base_optimizer
from .distributed import FeedbackSum, broadcast_buffers_, default_process_group, unwrap_model
from .engine import FeedbackReduction, LFPPass, RewardFunction, lfp_pass
from .functional import FeedbackScaling, weight_scale_
from .presets import AUTO, Preset, resolve_rules
from .rules import DropoutMode, RuleMap
from .snn.neurons import LIF
from .zero_init import ZeroParameters, handle_zero_parameters

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

HALF_PRECISION = (torch.float16, torch.bfloat16)

SCALING: dict[str, FeedbackScaling] = {
    "grad_norm": "grad_norm",
    "normalized": "mean_magnitude",
    "mean": "none",
    "sum": "none",
}
"""The per-tensor scaling (`lfpoptim.functional.FeedbackScaling`) of each ``feedback_reduction``."""


def _reward_in_float32(reward_fn: RewardFunction) -> RewardFunction:
    r"""``reward_fn``, computed in float32 (outside autocast) when the outputs are float16 or bfloat16.

    Under ``torch.autocast`` the logits come out in half precision; a reward such as
    \(y \odot (t - \operatorname{softmax}(y))\) would then lose most of its digits where
    \(t - \operatorname{softmax}(y)\) is small. The engine casts the result back to the outputs' dtype.
    """

    def reward(outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        if outputs.dtype not in HALF_PRECISION:
            return reward_fn(outputs, targets)
        with torch.autocast(outputs.device.type, enabled=False):
            return reward_fn(outputs.float(), targets)

    return reward


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
            ``functools.partial`` of one, a timm optimizer name (``"adamw"``, ``"lamb"``, ...)
            built by ``timm.optim.create_optimizer_v2``, or an optimizer that is already built
            (by timm's factory, a Lightning module, ...), used with its own parameter groups,
            state, hooks and schedulers.
        epsilon: ε of the epsilon rule; the preset's own when ``None`` (1e-6 for ``default``, 1 for
            ``vit`` as in the reference).
        feedback_reduction: how feedback is averaged and scaled before the step.
            ``"grad_norm"`` (default) averages it over the batch and rescales each parameter
            tensor's feedback \(|\theta| \odot J_\theta^\top n\) to the 2-norm of
            \(J_\theta^\top n\) (for a ReLU network and `lfpoptim.rewards.SoftmaxLossReward`,
            the norm of the cross-entropy's gradient): each tensor's step is as long as SGD's, so
            SGD's learning rates carry over, and points where LFP says. ``"normalized"``
            divides each tensor's batch-mean feedback by its mean magnitude
            \(\overline{|\theta|}\) instead (steps of SGD's size on average, longer for the
            largest weights). ``"mean"`` only averages over the batch (the weight scaling then
            shrinks steps by the typical weight magnitude, ~0.05 in an MLP, so learning rates must
            be ~20x SGD's). ``"sum"`` sums over the batch as the reference implementation does
            (learning rate divided by the batch size, or clipping, needed).
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
        zero_parameters: ``"fill"`` (default) gives every all-zero trainable tensor (zero-initialised
            biases, timm's ``zero_init_last`` gains) a small magnitude at construction, since LFP
            cannot move a zero; ``"keep"`` leaves them at zero, as the reference implementation
            does. See `lfpoptim.zero_init`.
        **base_kwargs: passed to ``base`` (``lr``, ``momentum``, ``weight_decay``, ...).

    Attributes:
        model (nn.Module): the network being trained, as given (DDP and ``torch.compile`` wrappers included).
        reward_fn (RewardFunction): the reward function, as given.
        preset (Preset | None): the preset the rules came from (``None`` for a rule map of one's own).
        epsilon (float | None): the ε the rules were built with (``None`` for a rule map of one's own).
        feedback_reduction: how feedback is scaled before the step (see ``feedback_reduction`` above).
        clip_norm (float | None): the 2-norm feedback is clipped to, or ``None``.
        rules (lfpoptim.rules.CoverageCheck): the rule map the passes run under.
        base: the optimizer that applies the update.

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
        feedback_reduction: FeedbackReduction = "grad_norm",
        clip_norm: float | None = None,
        dropout: DropoutMode = "reference",
        params: Iterable[Any] | None = None,
        rules: RuleMap | None = None,
        preset: str | Preset = AUTO,
        strict: bool = False,
        zero_parameters: ZeroParameters = "fill",
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
        handle_zero_parameters(model, self._trainable(), zero_parameters)
        self.model = model
        self.reward_fn = reward_fn
        self._module = unwrap_model(model).module  # what the pass runs: the model inside DDP and compile wrappers
        self._neurons = [module for module in self._module.modules() if isinstance(module, LIF)]
        self.preset = resolved.preset
        self.epsilon = resolved.epsilon
        self.feedback_reduction: FeedbackReduction = feedback_reduction
        self.clip_norm = clip_norm
        self.rules = resolved.rules

    def _trainable(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    process_group: ProcessGroup | Literal["auto"] | None = "auto"
    """The process group feedback is summed over before each step.

    ``"auto"`` (the default): a ``DistributedDataParallel`` model's own group, or the world group
    for any other model once ``torch.distributed`` is initialised (nothing in a single process).
    ``None`` keeps each process's feedback to itself; a group of one's own is used as given.
    """

    _accumulated: FeedbackSum | None = None

    @overload  # type: ignore[override]
    def step(self, inputs: None = None, targets: None = None) -> None: ...

    @overload
    def step(self, inputs: Any, targets: Any = None) -> LFPStepResult: ...

    def step(self, inputs: Any = None, targets: Any = None) -> LFPStepResult | None:
        """One LFP training step: on a batch, on accumulated micro-batches, or on both.

        ``step(inputs, targets)`` trains on one batch. After `accumulate` calls, ``step()`` applies
        the feedback summed over those micro-batches, and ``step(inputs, targets)`` adds a last
        micro-batch first. In a process group (a ``DistributedDataParallel`` model, or any model
        once ``torch.distributed`` is initialised, see `process_group`) the feedback is summed
        over all processes by one all-reduce (`lfpoptim.distributed`), so every rank makes the
        update of one step on the concatenated global batch; every rank must call ``step``.
        Spiking neurons (`lfpoptim.snn.LIF`) in the model are reset to rest before each batch.

        Args:
            inputs: passed to the model as ``model(inputs)``; ``None`` to step on accumulated
                feedback only.
            targets: passed to the reward as ``reward_fn(outputs, targets)``.

        Returns:
            the outputs and the reward of ``inputs``, for logging; ``None`` without inputs.

        If anything raises before the base optimizer updates the parameters (the forward, the
        reward, NaN or Inf in the outputs, the reward or the feedback, the backward, a base
        optimizer's step pre-hook), the model, its buffers, the parameters, their ``.grad`` and the
        optimizer state are left as they were (after `accumulate` calls, the accumulated feedback
        is discarded, as by `zero_grad`).
        """
        group = self._feedback_group()
        if inputs is None and self._accumulated is None:
            raise RuntimeError(
                "step() without inputs applies the feedback of accumulate(inputs, targets) calls, but nothing "
                "was accumulated since the last step; call step(inputs, targets) to train on a batch"
            )
        result: LFPStepResult | None = None
        single: LFPPass | None = None
        if self._accumulated is None and group is None:  # one batch, one process: the pass averages itself
            params = self._trainable()
            single = self._lfp_pass(inputs, targets, params, self.feedback_reduction)
            grads = single.grads
            result = LFPStepResult(outputs=single.outputs, reward=single.reward)
        else:
            if inputs is not None:
                result = self.accumulate(inputs, targets)
            accumulated = self._accumulated
            assert accumulated is not None
            if group is not None:
                accumulated.all_reduce_(group)
            self._accumulated = None
            params = accumulated.params
            grads = accumulated.feedback_factors(mean=self.feedback_reduction != "sum")
        previous_grads = [param.grad for param in params]
        try:
            if not weight_scale_(grads, params, sign=-1.0, scaling=SCALING[self.feedback_reduction]):
                raise self._non_finite_feedback(params, grads)
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad
            if self.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
            self.base.step()
        except BaseException:
            for param, grad in zip(params, previous_grads, strict=True):
                param.grad = grad
            if single is not None:
                single.restore_buffers()
            raise
        return result

    def _non_finite_feedback(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> ValueError:
        """The error for feedback with NaN or Inf in it, naming the parameters (outputs and reward were finite)."""
        names = {id(param): name for name, param in self.model.named_parameters()}
        bad = [names.get(id(p), "?") for p, grad in zip(params, grads, strict=True) if not grad.isfinite().all()]
        return ValueError(
            f"the feedback contains NaN or Inf ({len(bad)} of {len(params)} parameter tensors: "
            f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) although the model's outputs and the reward are "
            "finite: check the inputs for NaN or Inf (a step function such as Heaviside turns them into finite "
            "outputs) and the parameters; nothing was changed"
        )

    def accumulate(self, inputs: Any, targets: Any = None) -> LFPStepResult:
        r"""Add one micro-batch's feedback to the sum that the next `step` applies.

        ``accumulate(x1, y1); accumulate(x2, y2); step()`` makes the update of
        ``step(cat([x1, x2]), cat([y1, y2]))``, for every ``feedback_reduction``: the raw factors
        \(J_\theta^\top n\) are summed over samples, and only at the step divided by the total
        number of samples (for every reduction but ``"sum"``) and multiplied by \(|\theta|\).
        Parameters, ``.grad`` and the optimizer state stay untouched until then, and nothing is
        communicated between processes: the step's one all-reduce covers every micro-batch.
        `zero_grad` discards the sum. Memory: one feedback-sized sum, as ``.grad`` in a gradient
        accumulation loop.

        Args:
            inputs: the micro-batch, passed to the model as ``model(inputs)``.
            targets: passed to the reward as ``reward_fn(outputs, targets)``.

        Returns:
            the micro-batch's outputs and reward, for logging.
        """
        params = self._trainable()
        if self._accumulated is None:  # the step's first forward
            self._broadcast_ddp_buffers()
        result = self._lfp_pass(inputs, targets, params, "sum")
        samples = result.outputs.shape[self._batch_dim()]
        if self._accumulated is None:
            self._accumulated = FeedbackSum(params, result.grads, samples)
        else:
            self._accumulated.add_(params, result.grads, samples)
        return LFPStepResult(outputs=result.outputs, reward=result.reward)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset ``.grad`` as ``torch.optim.Optimizer.zero_grad`` does, and discard accumulated feedback.

        Args:
            set_to_none: set ``.grad`` to ``None`` instead of zeroing it.
        """
        self._accumulated = None
        super().zero_grad(set_to_none)

    def _feedback_group(self) -> ProcessGroup | None:
        if isinstance(self.process_group, str):
            return default_process_group(self.model)
        return self.process_group

    def _broadcast_ddp_buffers(self) -> None:
        """As ``DistributedDataParallel(broadcast_buffers=True)`` does before a forward: rank 0's buffers everywhere."""
        ddp = unwrap_model(self.model).ddp
        group = self._feedback_group()
        if ddp is not None and ddp.broadcast_buffers and group is not None:
            broadcast_buffers_(ddp.module, group)

    def _lfp_pass(self, inputs: Any, targets: Any, params: list[torch.Tensor], reduction: FeedbackReduction) -> LFPPass:
        """One LFP pass on the model inside any DDP or ``torch.compile`` wrapper (see `unwrap_model`)."""
        if not params:
            raise ValueError(
                "the model has no trainable parameters (requires_grad is False for every parameter the optimizer "
                "holds): there is nothing to compute feedback for"
            )
        for neuron in self._neurons:  # every batch starts from rest, as in `lfpoptim.snn.TimeLoop`
            neuron.reset_state()
        return lfp_pass(
            self._module,
            inputs,
            targets,
            _reward_in_float32(self.reward_fn),
            params,
            rules=self.rules,
            reduction=reduction,
            batch_dim=self._batch_dim(),
        )

    def _batch_dim(self) -> int:
        """The outputs' batch dimension: the model's ``batch_dim`` (1 for time-major spiking models), else 0."""
        return getattr(self._module, "batch_dim", 0)

    def feedback(self, inputs: Any, targets: Any = None) -> dict[str, torch.Tensor]:
        r"""The feedback \(F_\theta\) of every trainable parameter of the model, by name.

        Computed with this optimizer's settings (ε, reduction, dropout), changing nothing: not
        the parameters, not their ``.grad``, not the optimizer state, not the model's buffers.
        Note that a model in ``train()`` mode still draws new dropout masks. In a process group
        it is this process's feedback: nothing is communicated.

        Args:
            inputs: passed to the model as ``model(inputs)``.
            targets: passed to the reward as ``reward_fn(outputs, targets)``.

        Returns:
            \(F_\theta\) per trainable parameter, keyed by its name in ``model.named_parameters()``.
        """
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        result = self._lfp_pass(inputs, targets, params, self.feedback_reduction)
        result.restore_buffers()
        weight_scale_(result.grads, params, sign=1.0, scaling=SCALING[self.feedback_reduction])
        return {name: grad for (name, _), grad in zip(named, result.grads, strict=True)}

    def __repr__(self) -> str:
        return (
            f"LFPOptimizer(base={type(self.base).__name__}, "
            f"preset={self.preset.name if self.preset else None!r}, epsilon={self.epsilon}, "
            f"feedback_reduction={self.feedback_reduction!r}, clip_norm={self.clip_norm})\n{self.base!r}"
        )
