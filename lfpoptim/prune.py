r"""Prune by weight magnitude or by LFP feedback, and measure what pruning costs.

Every function here masks weights with `torch.nn.utils.prune`, so a pruned model keeps
``weight_orig`` as its parameter and multiplies it by the buffer ``weight_mask`` in each forward
(``torch.nn.utils.prune.remove``, or `remove_masks`, makes the zeros permanent).

Two criteria choose what to remove:

- **magnitude** (`magnitude_prune`): the weights with the smallest \(|\theta|\);
- **relevance** (`relevance_prune`): the weights with the least accumulated LFP feedback,
  \(S_\theta = \sum_b |F_\theta^{(b)}|\) over a few batches (`feedback_scores`). For a
  ReLU network and `lfpoptim.rewards.SoftmaxLossReward` this is
  \(\sum_b |\theta \odot \partial L_b / \partial \theta|\), the first-order Taylor estimate
  of how much the loss changes when the weight is removed; for other rules and rewards it is
  the share of reward each weight carries.

Either criterion ranks all the chosen weights together (``scope="global"``: the network decides
which layers lose most) or each tensor on its own (``scope="layer"``: every tensor loses the
same fraction). `pruning_curve` evaluates a model at several pruning fractions, each time on
a copy, and `plot_pruning_curves` draws the result.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from .analysis import PRUNED_SUFFIX, ZeroParameterWarning, effective_parameters
from .optimizer import LFPOptimizer
from .rewards import SoftmaxLossReward

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .engine import RewardFunction
    from .rules import RuleMap

PruningScope = Literal["global", "layer"]

PRUNABLE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
"""Layers whose ``weight`` `prunable_weights` offers by default."""

DEFAULT_FRACTIONS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
"""The pruning fractions `pruning_curve` evaluates unless told otherwise."""


def prunable_weights(model: nn.Module) -> list[str]:
    """The names of the ``weight`` of every linear and convolution layer of ``model``.

    Biases and normalisation parameters are left out: they are few, and pruning them rarely
    saves anything. Pass other names to the pruning functions to prune those too.

    Args:
        model: the network.

    Returns:
        parameter names such as ``"features.0.weight"``, in module order.
    """
    return [
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if isinstance(module, PRUNABLE_LAYERS)
    ]


def _resolve(model: nn.Module, names: Sequence[str] | None) -> list[tuple[str, nn.Module, str]]:
    """``(full name, owning module, tensor name)`` for each parameter name, checked to exist."""
    names = prunable_weights(model) if names is None else list(names)
    if not names:
        raise ValueError(
            "there is nothing to prune: the model has no linear or convolution layer and no names were given"
        )
    resolved = []
    for name in names:
        module_name, _, tensor_name = name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        is_parameter = module is not None and (
            isinstance(module._parameters.get(tensor_name), nn.Parameter)
            or isinstance(module._parameters.get(tensor_name + PRUNED_SUFFIX), nn.Parameter)
        )
        if not is_parameter:
            available = ", ".join(name for name, _ in effective_parameters(model))
            raise ValueError(f"the model has no parameter {name!r}; its parameters are: {available}")
        resolved.append((name, module, tensor_name))
    return resolved


def _check_amount(amount: float) -> None:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"amount must be a fraction (float) or a number of weights (int), got {type(amount).__name__}")
    if isinstance(amount, float) and not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount as a fraction must lie in [0, 1], got {amount}")
    if isinstance(amount, int) and amount < 0:
        raise ValueError(f"amount as a number of weights must be non-negative, got {amount}")


def _prune(
    model: nn.Module,
    amount: float,
    scope: PruningScope,
    names: Sequence[str] | None,
    scores: Mapping[str, torch.Tensor] | None,
) -> None:
    _check_amount(amount)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    targets = _resolve(model, names)
    importance: dict[tuple[nn.Module, str], torch.Tensor] = {}
    if scores is not None:
        for name, module, tensor_name in targets:
            if name not in scores:
                raise KeyError(f"scores has no entry for {name!r}; compute them with feedback_scores(model, ...)")
            expected = getattr(module, tensor_name).shape
            if scores[name].shape != expected:
                raise ValueError(
                    f"scores[{name!r}] has shape {tuple(scores[name].shape)} "
                    f"but the parameter has shape {tuple(expected)}"
                )
            importance[(module, tensor_name)] = scores[name].detach()
    if scope == "global":
        prune.global_unstructured(
            [(module, tensor_name) for _, module, tensor_name in targets],
            pruning_method=prune.L1Unstructured,
            importance_scores=importance or None,
            amount=amount,
        )
        return
    for _, module, tensor_name in targets:
        prune.l1_unstructured(module, tensor_name, amount, importance_scores=importance.get((module, tensor_name)))


def magnitude_prune(
    model: nn.Module, amount: float, *, scope: PruningScope = "global", names: Sequence[str] | None = None
) -> None:
    r"""Mask the weights of smallest magnitude \(|\theta|\), in place.

    Args:
        model: the network to prune.
        amount: a fraction in ``[0, 1]`` or a number of weights. With ``scope="global"`` it counts
            over all ``names`` together, with ``scope="layer"`` over each tensor on its own. On a
            model pruned before, it counts among the weights still unpruned, as
            `torch.nn.utils.prune` does.
        scope: ``"global"`` ranks all chosen weights together, ``"layer"`` each tensor separately.
        names: parameter names to prune (``"features.0.weight"``); by default the weights of all
            linear and convolution layers (`prunable_weights`).

    Raises:
        TypeError: if ``amount`` is neither a float nor an int.
        ValueError: if ``amount`` or ``scope`` is out of range, a name is not a parameter of
            ``model``, or there is nothing to prune.
    """
    _prune(model, amount, scope, names, scores=None)


def relevance_prune(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    amount: float,
    *,
    scope: PruningScope = "global",
    names: Sequence[str] | None = None,
) -> None:
    """Mask the weights with the smallest ``scores``, in place.

    Args:
        model: the network to prune.
        scores: a non-negative importance per weight, by parameter name and shaped like it,
            usually the accumulated feedback from `feedback_scores`.
        amount: a fraction in ``[0, 1]`` or a number of weights, as in `magnitude_prune`.
        scope: ``"global"`` ranks all chosen weights together, ``"layer"`` each tensor separately.
            Global ranking compares scores across layers, which the accumulated feedback allows:
            it is the reward each weight carries, on one scale for the whole network.
        names: parameter names to prune; by default those of `prunable_weights`.

    Raises:
        TypeError: if ``amount`` is neither a float nor an int.
        ValueError: if ``amount`` or ``scope`` is out of range, a name is not a parameter of
            ``model``, or a score's shape differs from its parameter's.
        KeyError: if ``scores`` lacks one of the parameters to prune.
    """
    _prune(model, amount, scope, names, scores=scores)


def feedback_scores(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    reward_fn: RewardFunction | None = None,
    *,
    epsilon: float = 1e-6,
    rules: RuleMap | None = None,
) -> dict[str, torch.Tensor]:
    r"""The LFP feedback magnitude of every trainable parameter, accumulated over ``batches``.

    \[
    S_\theta = \sum_b \left| F_\theta^{(b)} \right|,
    \]

    where \(F_\theta^{(b)}\) is the feedback of batch \(b\) averaged over its samples
    (`lfpoptim.LFPOptimizer.feedback` with ``feedback_reduction="mean"``: no per-tensor
    normalisation, so scores of different layers can be ranked together). Any model can be
    scored, whatever trained it; nothing about it changes. Put it in ``eval()`` mode first for
    scores that do not depend on dropout masks.

    Args:
        model: the network.
        batches: ``(inputs, targets)`` pairs; a few batches of training data are enough.
        reward_fn: the reward to propagate; `lfpoptim.rewards.SoftmaxLossReward` if
            ``None``.
        epsilon: ε of the epsilon rule.
        rules: a rule map replacing the default one.

    Returns:
        scores by parameter name, shaped like each parameter. A parameter pruned before is named
        without the ``_orig`` suffix (``"0.weight"``), so that the scores index the pruning
        functions directly; its pruned entries score 0.

    Raises:
        ValueError: if ``batches`` is empty.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZeroParameterWarning)  # scoring trains nothing
        scorer = LFPOptimizer(
            model,
            SoftmaxLossReward() if reward_fn is None else reward_fn,
            epsilon=epsilon,
            feedback_reduction="mean",
            rules=rules,
            zero_parameters="keep",  # scoring must not change the model
            lr=0.0,
        )
    totals: dict[str, torch.Tensor] = {}
    for inputs, targets in batches:
        for name, feedback in scorer.feedback(inputs, targets).items():
            magnitude = feedback.detach().abs()
            totals[name] = totals[name] + magnitude if name in totals else magnitude
    if not totals:
        raise ValueError("batches was empty: feedback_scores needs at least one (inputs, targets) batch")
    return {_unpruned_name(model, name): total for name, total in totals.items()}


def _unpruned_name(model: nn.Module, name: str) -> str:
    module_name, _, tensor_name = name.rpartition(".")
    base_name = tensor_name.removesuffix(PRUNED_SUFFIX)
    if tensor_name.endswith(PRUNED_SUFFIX) and hasattr(model.get_submodule(module_name), f"{base_name}_mask"):
        return f"{module_name}.{base_name}" if module_name else base_name
    return name


def pruned_fraction(model: nn.Module, names: Sequence[str] | None = None) -> float:
    """The fraction of exact zeros among the weights ``names``, as the forward uses them.

    Args:
        model: the network, pruned or not.
        names: parameter names; by default those of `prunable_weights`.

    Returns:
        the fraction, in ``[0, 1]``.

    Raises:
        ValueError: if a name is not a parameter of ``model``, or no name is given and the model
            has no linear or convolution layer.
    """
    wanted = {name for name, _, _ in _resolve(model, names)}
    tensors = [param for name, param in effective_parameters(model) if name in wanted]
    total = sum(tensor.numel() for tensor in tensors)
    zeros = sum(tensor.numel() - int(torch.count_nonzero(tensor)) for tensor in tensors)
    return zeros / total


def remove_masks(model: nn.Module) -> list[str]:
    """Make pruning permanent: every masked parameter becomes a plain one with zeros, in place.

    Args:
        model: the network pruned with `torch.nn.utils.prune`.

    Returns:
        the names of the parameters that were unmasked.
    """
    unmasked = []
    for module_name, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
                unmasked.append(f"{module_name}.{hook._tensor_name}" if module_name else hook._tensor_name)
    return unmasked


@dataclass(frozen=True)
class PruningCurve:
    """A metric of a model against the fraction of its weights pruned.

    Attributes:
        fractions: the pruning fractions, in the order evaluated.
        values: ``evaluate(pruned copy)`` at each fraction (e.g. test accuracy).
    """

    fractions: tuple[float, ...]
    values: tuple[float, ...]


def pruning_curve(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    scores: Mapping[str, torch.Tensor] | None = None,
    scope: PruningScope = "global",
    names: Sequence[str] | None = None,
) -> PruningCurve:
    """Evaluate ``model`` pruned to each of ``fractions``, each time on a fresh copy.

    One-shot pruning without fine-tuning: each fraction starts again from ``model``, which is
    never modified (it is deep-copied once per fraction, so memory for one extra copy is needed).

    Args:
        model: the trained network.
        evaluate: returns the metric of a model, e.g. its accuracy on held-out data.
        fractions: fractions of the weights ``names`` to prune, each in ``[0, 1]``.
        scores: prune by these scores (`relevance_prune`, e.g. from
            `feedback_scores`); by weight magnitude (`magnitude_prune`) if ``None``.
        scope: ``"global"`` or ``"layer"``, as in `magnitude_prune`.
        names: the parameters to prune; by default those of `prunable_weights`.

    Returns:
        the fractions with the metric at each.

    Raises:
        ValueError: if a fraction lies outside ``[0, 1]``, or as `magnitude_prune` and
            `relevance_prune` raise.
    """
    values = []
    for fraction in fractions:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"pruning fractions must lie in [0, 1], got {fraction}")
        pruned = copy.deepcopy(model)
        _prune(pruned, float(fraction), scope, names, scores)
        values.append(float(evaluate(pruned)))
    return PruningCurve(fractions=tuple(float(fraction) for fraction in fractions), values=tuple(values))


def plot_pruning_curves(
    curves: Mapping[str, PruningCurve | Sequence[PruningCurve]],
    ax: Axes | None = None,
    ylabel: str = "test accuracy",
) -> Axes:
    """Plot metric against fraction pruned, one line per label.

    Several curves under one label (e.g. one per seed) are drawn as their mean, with the range
    between their minimum and maximum shaded. Needs matplotlib (imported here, not with the
    package).

    Args:
        curves: label -> a curve or a sequence of curves sharing their fractions.
        ax: where to draw; a new figure's axes if ``None``.
        ylabel: the y-axis label.

    Returns:
        the axes drawn on (``ax.figure.savefig(path)`` saves the plot).

    Raises:
        ValueError: if a label has no curves, or curves under one label have different fractions.
    """
    import matplotlib.pyplot as plt  # an optional dependency: imported only when plotting

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for label, entry in curves.items():
        runs = [entry] if isinstance(entry, PruningCurve) else list(entry)
        if not runs:
            raise ValueError(f"no curves under label {label!r}")
        fractions = runs[0].fractions
        if any(run.fractions != fractions for run in runs):
            raise ValueError(f"the curves under label {label!r} were evaluated at different fractions")
        values = np.array([run.values for run in runs])
        percent = 100 * np.array(fractions)
        (line,) = ax.plot(percent, values.mean(axis=0), marker=".", label=label)
        if len(runs) > 1:
            ax.fill_between(percent, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("weights pruned (%)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
