r"""Rewards with the call shape of a torch loss: ``reward(outputs, targets) -> Tensor``.

A reward says, per sample and per output unit, what was good (positive) or bad (negative); LFP
decomposes it backwards through the network. The returned tensor is shaped like ``outputs`` and
lives on their device. The class names are those of the reference implementation (``lfprop``),
but no ``device`` argument is needed: it is taken from the outputs.

Classification rewards take ``targets`` as class indices shaped ``(batch,)`` (any integer dtype)
or, where noted, as class probabilities shaped like the outputs, just as
`torch.nn.functional.cross_entropy` does. A language model's logits ``(batch, tokens,
vocabulary)`` take next-token indices ``(batch, tokens)``; an index of -100 (`IGNORE_INDEX`,
Hugging Face's padding label) gets zero reward at every unit of that position.

The seed of LFP's backward pass is \(R / y\) per output unit, so a reward of the form
\(y \odot s\) makes the outputs move along \(s\): for `SoftmaxLossReward`,
\(s = \text{onehot} - \operatorname{softmax}(y)\) is exactly minus the gradient of
cross-entropy at the logits.

The reference's discrete rewards, `CorrectClassificationReward` and `MisclassificationReward`,
multiply by \(\operatorname{sign}(y)\) instead: their seed \(\pm 1 / |y|\) is largest where an
output is close to zero, whatever the model's confidence, and it says nothing about the classes
that were not chosen. They are kept under the reference's names to reproduce its experiments and
to fine-tune models that already give confident outputs; from a random start they do not learn
(the digits MLP stays at chance). To learn from a yes/no, a rating or a preference, use the
adapters of `lfpoptim.rewards_feedback` (`ScoreReward`, also importable from here, `RatingReward`,
`PreferenceReward`), whose seed is the policy gradient of the judged answer.
"""

from __future__ import annotations

from typing import Any

import torch

from .rewards_feedback import ScoreReward  # noqa: F401 (moved there; kept importable from here)

__all__ = [
    "IGNORE_INDEX",
    "BinarySigmoidLossReward",
    "BoundedSoftmaxReward",
    "CorrectClassificationReward",
    "MaximizeSingleNeuron",
    "MinimizeSingleNeuron",
    "MisclassificationReward",
    "SigmoidLossReward",
    "SoftmaxLossReward",
]


IGNORE_INDEX = -100
"""The class index that marks a target to ignore (padding, a prompt token): it gets zero reward.

Hugging Face's collators and `torch.nn.functional.cross_entropy` use the same value."""


def _check_logits(outputs: torch.Tensor, reward: str) -> None:
    if outputs.dim() < 2:
        raise ValueError(
            f"{reward} expects outputs shaped (batch, classes), got shape {tuple(outputs.shape)} "
            "(a language model's are (batch, tokens, vocabulary))"
        )


def class_indices(outputs: torch.Tensor, targets: Any, reward: str, *, check_range: bool = True) -> torch.Tensor:
    """Validate class-index targets for ``outputs`` shaped ``(*batch, classes)`` and return them.

    ``outputs`` are ``(batch, classes)`` for a classifier and ``(batch, tokens, vocabulary)`` for a
    language model; ``targets`` are shaped like ``outputs`` without the last dimension. Entries
    equal to `IGNORE_INDEX` (-100) are kept as they are: the rewards give them zero reward.

    Args:
        outputs: the logits, shaped ``(*batch, classes)``.
        targets: what the user passed as targets.
        reward: the reward's name, for error messages.
        check_range: also check that every index other than `IGNORE_INDEX` lies in ``[0, classes)``
            (one host sync); `class_targets` leaves that to ``Tensor.scatter_``, which checks it on
            the CPU anyway.

    Raises:
        TypeError: targets that are not an integer tensor.
        ValueError: outputs with fewer than 2 dimensions, targets of the wrong shape, an index out of range.
    """
    _check_logits(outputs, reward)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{reward} expects targets as a torch.Tensor of class indices, got {type(targets).__name__}")
    expected = tuple(outputs.shape[:-1])
    if tuple(targets.shape) != expected:
        shape = f"({expected[0]},)" if len(expected) == 1 else str(expected)
        raise ValueError(
            f"targets have shape {tuple(targets.shape)} but {reward} expects class indices shaped {shape} "
            f"for outputs of shape {tuple(outputs.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"targets have dtype {targets.dtype} but class indices must be an integer dtype (torch.long)")
    if check_range:
        _check_range(targets, outputs.shape[-1])
    return targets.to(device=outputs.device, dtype=torch.long)


def _check_range(indices: torch.Tensor, classes: int) -> None:
    indices = indices[indices != IGNORE_INDEX]
    if indices.numel() == 0:
        return
    lowest, highest = (int(value) for value in torch.aminmax(indices))
    if lowest < 0 or highest >= classes:
        bad = highest if highest >= classes else lowest
        raise ValueError(f"target class index {bad} is out of range for outputs with {classes} classes")


def kept_targets(outputs: torch.Tensor, targets: Any) -> torch.Tensor | None:
    """Where the targets are not `IGNORE_INDEX`, as a 0/1 mask shaped ``(*batch, 1)`` in the outputs' dtype.

    Args:
        outputs: the logits, shaped ``(*batch, classes)``.
        targets: class indices shaped ``(*batch)``, or class probabilities shaped like ``outputs``.

    Returns:
        the mask, or ``None`` when nothing is ignored (probability targets, or no index is -100).
    """
    if not isinstance(targets, torch.Tensor) or targets.shape == outputs.shape:
        return None
    ignored = targets == IGNORE_INDEX
    if not bool(ignored.any()):
        return None
    return (~ignored).to(device=outputs.device, dtype=outputs.dtype).unsqueeze(-1)


def class_targets(outputs: torch.Tensor, targets: Any, reward: str) -> torch.Tensor:
    """One-hot encode class indices along the last dimension, or copy class probabilities shaped like ``outputs``.

    The result is a new tensor in the dtype of ``outputs`` that the caller may modify in place.
    An ignored target (`IGNORE_INDEX`) gets an all-zero row; the rewards zero their result there
    with `kept_targets`.

    Args:
        outputs: the logits, shaped ``(*batch, classes)``.
        targets: class indices shaped ``(*batch)``, or class probabilities shaped like ``outputs``.
        reward: the reward's name, for error messages.
    """
    if isinstance(targets, torch.Tensor) and targets.shape == outputs.shape and targets.dtype.is_floating_point:
        return targets.to(device=outputs.device, dtype=outputs.dtype, copy=True)
    classes = outputs.shape[-1]
    on_cpu = outputs.device.type == "cpu"
    indices = class_indices(outputs, targets, reward, check_range=not on_cpu)
    kept = indices != IGNORE_INDEX
    index, value = (indices * kept).unsqueeze(-1), kept.unsqueeze(-1).to(outputs.dtype)  # an ignored index writes 0
    try:  # written straight in the outputs' dtype (F.one_hot would need a cast)
        return torch.zeros_like(outputs).scatter_(-1, index, value)
    except RuntimeError:  # on the CPU, scatter_ checks the range itself: say which index is wrong
        _check_range(indices, classes)
        raise


def _ignoring(reward: torch.Tensor, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
    """``reward`` with zeros where the target is `IGNORE_INDEX` (in place)."""
    kept = kept_targets(outputs, targets)
    return reward if kept is None else reward.mul_(kept)


class SoftmaxLossReward:
    r"""\(R = y \odot (t - \operatorname{softmax}(y))\), the paper's default.

    ``t`` is the one-hot target (or given class probabilities). \(R / y\) is minus the
    gradient of cross-entropy at the logits, which is why LFP with this reward on a ReLU network
    is weight-scaled gradient ascent on minus the cross-entropy.
    """

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        onehot = class_targets(outputs, targets, type(self).__name__)
        return _ignoring(onehot.sub_(outputs.softmax(dim=-1)).mul_(outputs), outputs, targets)


class SigmoidLossReward:
    r"""\(R = y \odot (t - \sigma(y))\) with one-hot ``t``: independent binary decisions per class."""

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        onehot = class_targets(outputs, targets, type(self).__name__)
        return _ignoring(onehot.sub_(torch.sigmoid(outputs)).mul_(outputs), outputs, targets)


class BinarySigmoidLossReward:
    r"""\(R = y \odot (t - \sigma(y))\) for one logit per sample and targets in {0, 1}.

    ``targets`` may have any shape with as many entries as ``outputs`` (``(batch,)`` for outputs
    shaped ``(batch, 1)``), like `torch.nn.functional.binary_cross_entropy_with_logits` after
    a reshape.
    """

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"BinarySigmoidLossReward expects targets as a torch.Tensor, got {type(targets).__name__}")
        if targets.numel() != outputs.numel():
            raise ValueError(
                f"targets have shape {tuple(targets.shape)} ({targets.numel()} entries) but outputs have shape "
                f"{tuple(outputs.shape)} ({outputs.numel()} entries): give one 0/1 target per logit"
            )
        labels = targets.to(device=outputs.device, dtype=outputs.dtype).view_as(outputs)
        return outputs * (labels - torch.sigmoid(outputs))


class BoundedSoftmaxReward:
    r"""Softmax reward whose probabilities are clipped to 0 below ``lower_bound`` and 1 above ``upper_bound``.

    \(R = y \odot (t - \tilde p)\), or \(\operatorname{sign}(y) \odot (t - \tilde p)\) with
    ``logit_sign_only=True``.

    Args:
        lower_bound: probabilities below it count as 0.
        upper_bound: probabilities above it count as 1.
        logit_sign_only: multiply by \(\operatorname{sign}(y)\) instead of \(y\).

    Attributes:
        lower_bound (float): probabilities below it count as 0.
        upper_bound (float): probabilities above it count as 1.
        logit_sign_only (bool): whether the reward multiplies by \(\operatorname{sign}(y)\) instead of \(y\).

    Raises:
        ValueError: unless ``0 <= lower_bound <= upper_bound <= 1``.
    """

    def __init__(self, lower_bound: float = 0.0, upper_bound: float = 1.0, logit_sign_only: bool = False) -> None:
        if not 0.0 <= lower_bound <= upper_bound <= 1.0:
            raise ValueError(
                f"bounds must satisfy 0 <= lower_bound <= upper_bound <= 1, got {lower_bound} and {upper_bound}"
            )
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        self.logit_sign_only = logit_sign_only

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        onehot = class_targets(outputs, targets, type(self).__name__)
        probabilities = outputs.softmax(dim=-1)
        probabilities = torch.where(probabilities > self.upper_bound, 1.0, probabilities)
        probabilities = torch.where(probabilities < self.lower_bound, 0.0, probabilities)
        scale = outputs.sign() if self.logit_sign_only else outputs
        return _ignoring(scale * (onehot - probabilities), outputs, targets)


def _target_logits(outputs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Each sample's target logit, shaped ``(*batch, 1)`` (an ignored target reads class 0; it is masked later)."""
    return outputs.gather(-1, indices.clamp_min(0).unsqueeze(-1))


class CorrectClassificationReward:
    r"""The reference's discrete reward: \(\operatorname{sign}(y)\) at the target unit of each right answer.

    0 elsewhere (at the other units and for wrong answers). Not differentiable, and LFP does not
    need it to be. Its seed \(1 / |y|\) at the target unit reinforces what is already right and
    says nothing where the model is wrong: it is for reproducing the reference's experiments and
    fine-tuning confident models, not for training from scratch (the digits MLP stays at 0.10).
    To learn from right/wrong, use `lfpoptim.rewards_feedback.ScoreReward`.
    """

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        indices = class_indices(outputs, targets, type(self).__name__)
        onehot = class_targets(outputs, indices, type(self).__name__)
        correct = _target_logits(outputs, indices) == outputs.amax(dim=-1, keepdim=True)
        return onehot.mul_(correct.to(outputs.dtype)).mul_(outputs.sign())


class MisclassificationReward:
    r"""The reference's discrete reward: \(-\operatorname{sign}(y)\) at every unit whose output beats the target's.

    0 elsewhere. As `CorrectClassificationReward`, its seed \(-1 / |y|\) ignores the model's
    confidence; it is kept for the reference's experiments.
    """

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        indices = class_indices(outputs, targets, type(self).__name__)
        beats_target = outputs > _target_logits(outputs, indices)
        return _ignoring(-beats_target.to(outputs.dtype) * outputs.sign(), outputs, targets)


class MaximizeSingleNeuron:
    r"""\(R = \operatorname{sign}(y)(1 - \sigma(y))\): push outputs up; ``targets`` are ignored.

    Args:
        unit: restrict the reward to this output unit (last dimension); all units when ``None``.

    Attributes:
        direction (float): +1, the sign the reward pushes the outputs in.
        unit (int | None): the output unit rewarded, or ``None`` for all.
    """

    direction = 1.0

    def __init__(self, unit: int | None = None) -> None:
        self.unit = unit

    def __call__(self, outputs: torch.Tensor, targets: Any = None) -> torch.Tensor:
        reward = self.direction * outputs.sign() * (1.0 - torch.sigmoid(outputs))
        if self.unit is None:
            return reward
        if not -outputs.shape[-1] <= self.unit < outputs.shape[-1]:
            raise ValueError(f"unit {self.unit} is out of range for outputs with {outputs.shape[-1]} units")
        mask = torch.zeros_like(outputs)
        mask[..., self.unit] = 1.0
        return reward * mask


class MinimizeSingleNeuron(MaximizeSingleNeuron):
    r"""\(R = -\operatorname{sign}(y)(1 - \sigma(y))\): push outputs down; ``targets`` are ignored.

    Args:
        unit: restrict the reward to this output unit (last dimension); all units when ``None``.

    Attributes:
        direction (float): -1, the sign the reward pushes the outputs in.
    """

    direction = -1.0
