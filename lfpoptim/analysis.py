r"""Sparsity of LFP updates and of the weights they produce.

LFP's feedback \(F_\theta = |\theta| \odot J_\theta^\top n\) is zero wherever no reward flows
(an inactive ReLU, a max-pooling loser) and wherever the parameter itself is zero. This module
measures that:

- `sparsity` and `gini` describe one tensor: the fraction of (near-)zero entries, and
  the Gini index of the magnitudes, a scale-free measure of how concentrated they are;
- `update_sparsity`, `weight_sparsity` and `weight_gini` apply them per
  parameter tensor of a model (or to a feedback dict from `lfpoptim.LFPOptimizer.feedback`);
- `SparsityTracker` records them during training, after each ``step``, from ``.grad``
  (which an LFP step sets to \(-F_\theta\), so its zeros are the feedback's zeros);
- `zero_parameters` lists parameters that are entirely zero: under LFP they never change
  (`lfpoptim.zero_init` says what the optimizers do about them).

Parameters pruned with `torch.nn.utils.prune` are measured as the model uses them (the
masked ``weight``, not ``weight_orig``), under the original name (``"0.weight"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

PRUNED_SUFFIX = "_orig"
"""What `torch.nn.utils.prune` appends to the name of the parameter it reparametrises."""


def sparsity(tensor: torch.Tensor, threshold: float = 0.0) -> float:
    r"""The fraction of entries with \(|x_i| \le\) ``threshold``.

    With the default ``threshold=0`` this is the fraction of exact zeros.

    Args:
        tensor: any tensor with at least one element.
        threshold: entries whose magnitude is at most this count as zero.

    Returns:
        the fraction, in ``[0, 1]``.

    Raises:
        ValueError: if ``tensor`` is empty or ``threshold`` is negative.
    """
    if tensor.numel() == 0:
        raise ValueError("sparsity of an empty tensor is undefined")
    if threshold < 0:
        raise ValueError(f"threshold must be non-negative, got {threshold}")
    tensor = tensor.detach()
    if threshold == 0:
        return 1.0 - int(torch.count_nonzero(tensor)) / tensor.numel()
    return int((tensor.abs() <= threshold).sum()) / tensor.numel()


def gini(tensor: torch.Tensor) -> float:
    r"""The Gini index of the magnitudes of ``tensor`` (Hurley & Rickard, 2009).

    With \(c_{(1)} \le \dots \le c_{(N)}\) the sorted magnitudes \(|x_i|\),

    \[
    G = 1 - 2 \sum_{k=1}^{N} \frac{c_{(k)}}{\lVert c \rVert_1} \cdot \frac{N - k + \tfrac12}{N}.
    \]

    \(G = 0\) when all magnitudes are equal and \(G = 1 - 1/N\) when a single entry is
    non-zero. Unlike a count of zeros it is scale-invariant and sees weights that are small
    without being exactly zero.

    Args:
        tensor: any tensor with at least one element; only its magnitudes count.

    Returns:
        ``G``, or ``nan`` for an all-zero tensor (0/0: every value is a limit of some sequence).

    Raises:
        ValueError: if ``tensor`` is empty.
    """
    if tensor.numel() == 0:
        raise ValueError("the Gini index of an empty tensor is undefined")
    magnitudes = tensor.detach().abs().flatten().to(torch.float64).sort().values
    total = magnitudes.sum()
    if total == 0:
        return float("nan")
    count = magnitudes.numel()
    ranks = torch.arange(1, count + 1, dtype=torch.float64, device=magnitudes.device)
    weights = (count - ranks + 0.5) / count
    return float(1.0 - 2.0 * (magnitudes / total * weights).sum())


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every parameter of ``model``, as the forward uses it.

    A parameter reparametrised by `torch.nn.utils.prune` (``weight_orig`` and the buffer
    ``weight_mask``) is given as the masked ``weight`` under the name ``"<module>.weight"``; every
    other parameter as `torch.nn.Module.named_parameters` gives it.

    Args:
        model: the network, pruned or not.

    Yields:
        ``(name, tensor)`` pairs, each parameter once even if modules share it.
    """
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # shared parameters are listed once, as named_parameters() does
                continue
            seen.add(id(param))
            base_name = name.removesuffix(PRUNED_SUFFIX)
            if name.endswith(PRUNED_SUFFIX) and hasattr(module, f"{base_name}_mask"):
                yield prefix + base_name, getattr(module, base_name)
            else:
                yield prefix + name, param


def update_sparsity(updates: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The fraction of exact zeros in each update tensor.

    Args:
        updates: feedback by parameter name, as `lfpoptim.LFPOptimizer.feedback` returns it,
            or any other name -> tensor mapping (gradients, ``.grad`` after a step).

    Returns:
        `sparsity` of each tensor, by the same names.

    Raises:
        ValueError: if a tensor is empty.
    """
    return {name: sparsity(update) for name, update in updates.items()}


def weight_sparsity(model: nn.Module, threshold: float = 0.0) -> dict[str, float]:
    """`sparsity` of every parameter tensor of ``model``, by name (pruned ones as masked).

    Args:
        model: the network.
        threshold: weights whose magnitude is at most this count as zero.

    Returns:
        the fraction of zero weights by parameter name, as `effective_parameters` names them.

    Raises:
        ValueError: if ``threshold`` is negative or a parameter is empty.
    """
    return {name: sparsity(param, threshold) for name, param in effective_parameters(model)}


def weight_gini(model: nn.Module) -> dict[str, float]:
    """`gini` of every parameter tensor of ``model``, by name (pruned ones as masked).

    Args:
        model: the network.

    Returns:
        the Gini index by parameter name (``nan`` for an all-zero tensor).

    Raises:
        ValueError: if a parameter is empty.
    """
    return {name: gini(param) for name, param in effective_parameters(model)}


def zero_parameters(model: nn.Module, params: Iterable[torch.Tensor] | None = None) -> list[str]:
    r"""The names of the trainable parameters of ``model`` whose entries are all exactly zero.

    LFP cannot train them: the feedback \(F_\theta = |\theta| \odot J_\theta^\top n\)
    vanishes where \(\theta = 0\), so a parameter that starts at zero stays at zero (a
    BatchNorm or LayerNorm bias initialised to 0, for example). The optimizers give them a small
    magnitude at construction unless told ``zero_parameters="keep"`` (`lfpoptim.zero_init`).

    Args:
        model: the network.
        params: only consider these parameters (e.g. those an optimizer trains); all of the
            model's when ``None``.

    Returns:
        the names, as `torch.nn.Module.named_parameters` gives them; empty if there are none.
    """
    wanted = None if params is None else {id(param) for param in params}
    return [
        name
        for name, param in model.named_parameters()
        if param.requires_grad
        and (wanted is None or id(param) in wanted)
        and param.numel() > 0
        and not bool(param.detach().any())
    ]


class ZeroParameterWarning(UserWarning):
    """Some trainable parameters are all zero: an optimizer gave them a small magnitude, or they will not train.

    See `lfpoptim.zero_init` and the optimizers' ``zero_parameters=`` argument.
    """


@dataclass
class SparsityRecord:
    """What `SparsityTracker` measured after one step.

    Attributes:
        step: how many times `SparsityTracker.update` had been called, counting this one.
        update_sparsity: fraction of exact zeros in ``.grad`` per parameter name (for an LFP
            step, the zeros of the feedback).
        weight_sparsity: fraction of weights with magnitude at most the tracker's threshold.
        weight_gini: Gini index of each parameter tensor, when the tracker computes it.
    """

    step: int
    update_sparsity: dict[str, float]
    weight_sparsity: dict[str, float]
    weight_gini: dict[str, float] | None = None


@dataclass
class SparsityTracker:
    """Records update and weight sparsity during training; call `update` after each step.

    It only reads ``.grad`` and the weights, so it works after an LFP step (where ``.grad`` is
    minus the feedback) and after an ordinary gradient step alike. Counting zeros is one pass
    over the parameters, far cheaper than the step itself; the Gini index sorts every tensor, so
    it is off by default. Use ``every`` to measure only every n-th step.

    Example:
        >>> tracker = SparsityTracker(model, every=10)
        >>> for inputs, targets in loader:
        ...     optimizer.step(inputs, targets)
        ...     tracker.update()
        >>> tracker.mean_update_sparsity()  # {'0.weight': 0.41, ...}

    Attributes:
        model: the model being trained.
        every: measure on every n-th call of `update`.
        threshold: weights with magnitude at most this count as zero in ``weight_sparsity``.
        track_gini: also record the Gini index of every parameter tensor.
        records: one `SparsityRecord` per measured step.

    Raises:
        ValueError: if ``every`` is below 1 or ``threshold`` is negative.
    """

    model: nn.Module
    every: int = 1
    threshold: float = 0.0
    track_gini: bool = False
    records: list[SparsityRecord] = field(default_factory=list)
    _calls: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be a positive integer, got {self.every}")
        if self.threshold < 0:
            raise ValueError(f"threshold must be non-negative, got {self.threshold}")

    @torch.no_grad()
    def update(self) -> SparsityRecord | None:
        """Measure now (if this call is one of every ``every``) and return the new record.

        Returns:
            the record appended to ``records``, or ``None`` if this call was skipped.
        """
        self._calls += 1
        if (self._calls - 1) % self.every:
            return None
        grads = {name: param.grad for name, param in self.model.named_parameters() if param.grad is not None}
        record = SparsityRecord(
            step=self._calls,
            update_sparsity=update_sparsity(grads),
            weight_sparsity=weight_sparsity(self.model, self.threshold),
            weight_gini=weight_gini(self.model) if self.track_gini else None,
        )
        self.records.append(record)
        return record

    def mean_update_sparsity(self) -> dict[str, float]:
        """The update sparsity of each parameter, averaged over the recorded steps that had its ``.grad``.

        Returns:
            the mean fraction of zeros by parameter name; empty before the first record.
        """
        values: dict[str, list[float]] = {}
        for record in self.records:
            for name, value in record.update_sparsity.items():
                values.setdefault(name, []).append(value)
        return {name: sum(history) / len(history) for name, history in values.items()}
