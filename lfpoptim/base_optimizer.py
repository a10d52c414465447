"""A ``torch.optim.Optimizer`` that is a thin face over another one.

Both LFP optimizers compute gradients their own way and leave the update to an ordinary
optimizer (SGD, AdamW, a timm optimizer). `WrappedOptimizer` makes them *be* that optimizer
wherever a training loop looks: ``param_groups`` and ``state`` are the base's own objects (so LR
schedulers and gradient clipping act on the base), and ``state_dict`` is the base's format (so a
checkpoint loads into either).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

BaseOptimizer = (
    type[torch.optim.Optimizer] | functools.partial | Callable[..., torch.optim.Optimizer] | str | torch.optim.Optimizer
)
"""An optimizer class, a ``functools.partial`` of one, a timm optimizer name (``"adamw"``), or a built optimizer."""


def build_base_optimizer(
    base: BaseOptimizer, model: nn.Module, params: Iterable[Any] | None, kwargs: dict[str, Any]
) -> torch.optim.Optimizer:
    """Build the optimizer that applies the update, over ``params`` or all of ``model``'s parameters.

    A string goes through ``timm.optim.create_optimizer_v2`` (with the model, so that timm's
    weight-decay grouping applies). An optimizer that is already built is returned as it is: its
    parameter groups (their own learning rates, weight decay, timm's layer decay), state, hooks
    and any scheduler already attached to it stay what they are.

    Args:
        base: an optimizer class, a ``functools.partial`` of one, a timm optimizer name, or a built optimizer.
        model: the network; its parameters are used when ``params`` is ``None``.
        params: parameters or parameter groups to optimise, as for any ``torch.optim.Optimizer``.
        kwargs: keyword arguments for ``base`` (``lr``, ``momentum``, ...).

    Returns:
        the optimizer ``base`` built.

    Raises:
        TypeError: if ``base`` is not callable or does not build a ``torch.optim.Optimizer``, if it is
            an LFP optimizer already, or if it is built and ``params`` or ``kwargs`` are given too.
    """
    if isinstance(base, WrappedOptimizer):
        raise TypeError(
            f"base is already an LFP optimizer ({type(base).__name__}); pass the optimizer it wraps (its .base)"
        )
    if isinstance(base, torch.optim.Optimizer):
        if params is not None or kwargs:
            given = ", ".join(["params", *kwargs] if params is not None else list(kwargs))
            raise TypeError(
                f"base is an optimizer that is already built ({type(base).__name__}), so its parameter groups and "
                f"settings are used as they are; got {given} as well: set them on that optimizer instead"
            )
        return base
    if isinstance(base, str):
        from timm.optim import create_optimizer_v2

        return create_optimizer_v2(model if params is None else params, opt=base, **kwargs)
    if not callable(base):
        raise TypeError(
            f"base must be an optimizer class, a functools.partial or a timm optimizer name, got {type(base).__name__}"
        )
    optimizer = base(model.parameters() if params is None else params, **kwargs)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"base(...) must build a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer


class WrappedOptimizer(torch.optim.Optimizer):
    """Shares ``param_groups``, ``state`` and ``defaults`` with ``base`` and delegates checkpoints to it.

    Subclasses implement ``step``; they write ``.grad`` and call ``self.base.step()``.

    Args:
        base: the optimizer that applies the update.

    Attributes:
        base: the optimizer that applies the update.
    """

    def __init__(self, base: torch.optim.Optimizer) -> None:
        super().__init__(base.param_groups, base.defaults)
        self.base: torch.optim.Optimizer = base
        self._share_base_state()

    def _share_base_state(self) -> None:
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        self.defaults = self.base.defaults

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict: a checkpoint loads into either optimizer."""
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by this optimizer or by a base optimizer of the same kind.

        Args:
            state_dict: the state, as `state_dict` returns it.
        """
        self.base.load_state_dict(state_dict)
        self._share_base_state()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the base optimizer (and so to this one).

        Args:
            param_group: a dict with ``"params"`` and any per-group options (``"lr"``, ...).
        """
        if "base" not in self.__dict__:  # called by torch.optim.Optimizer.__init__
            super().add_param_group(param_group)
            return
        self.base.add_param_group(param_group)
