r"""A slow, explicit, layer-by-layer implementation of epsilon-LFP, for testing the engine against.

It is written from the rules of ``LFP.md`` and shares no code with :mod:`lfpoptim.engine` or
:mod:`lfpoptim.rules`: it never uses the gradient formulation. The model is run one layer at a
time on detached inputs, every layer's input ``a`` and output ``z`` are kept, and the reward is
then walked backwards as a *relevance* :math:`R`:

- epsilon layers (Linear, ConvNd, the norms, average pooling, the residual sum):
  :math:`n = R_z / \operatorname{stab}(z)`, :math:`R_a = a \odot J_a^\top n` and
  :math:`F_\theta = |\theta| \odot J_\theta^\top n`, where the vector-Jacobian products come from
  ``torch.autograd.grad`` on that single layer;
- element-wise activations: :math:`R_z = R_a` (identity);
- max pooling, flatten, identity and dropout: the relevance itself is pushed through the layer's
  autograd (winner takes all; dropout scales kept units by :math:`1 / (1 - p)`, as the reference
  implementation does).

The walk starts at :math:`R_\text{out} = \text{reward}` and sums feedback over the batch.

Supported models: nested :class:`torch.nn.Sequential` containers of the layers above and
:class:`Residual` blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lfpoptim import Heaviside

AddForm = Literal["operator", "torch.add", "inplace"]
Backward = Callable[[torch.Tensor], torch.Tensor]

EPSILON_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
"""Layers that get the epsilon rule."""

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.SiLU,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardswish,
    nn.Mish,
    Heaviside,
)
"""Element-wise activations: the identity rule."""

GRADIENT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
"""Layers through which relevance moves as a gradient would."""


class Residual(nn.Module):
    """``act(main(x) + shortcut(x))``, with the sum written in one of three ways.

    Args:
        main: the residual branch (for example conv, batch norm).
        shortcut: the skip branch; identity when ``None``.
        act: applied to the sum; identity when ``None``.
        add: ``"operator"`` writes ``main + skip``, ``"torch.add"`` calls ``torch.add``, and
            ``"inplace"`` writes ``out += skip`` into the main branch's output.
    """

    def __init__(
        self,
        main: nn.Module,
        shortcut: nn.Module | None = None,
        act: nn.Module | None = None,
        add: AddForm = "operator",
    ) -> None:
        super().__init__()
        self.main = main
        self.shortcut = nn.Identity() if shortcut is None else shortcut
        self.act = nn.Identity() if act is None else act
        self.add = add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        skip = self.shortcut(x)
        if self.add == "operator":
            out = out + skip
        elif self.add == "torch.add":
            out = torch.add(out, skip)
        else:
            out += skip
        return self.act(out)

    def extra_repr(self) -> str:
        return f"add={self.add!r}"


def stab(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    r""":math:`z + \varepsilon(\operatorname{sign}(z) + [z = 0])`."""
    return z + epsilon * (torch.sign(z) + (z == 0).to(z.dtype))


@dataclass
class ReferenceResult:
    """What one reference pass computed.

    Attributes:
        outputs: the model's outputs.
        reward: ``reward_fn(outputs, targets)``.
        feedback: :math:`F_\\theta` per parameter name, summed over the batch.
        input_reward: the relevance that reached the inputs.
    """

    outputs: torch.Tensor
    reward: torch.Tensor
    feedback: dict[str, torch.Tensor]
    input_reward: torch.Tensor


class _Walker:
    """Runs a model layer by layer and returns, for each layer, how to carry relevance back."""

    def __init__(self, model: nn.Module, epsilon: float) -> None:
        self.epsilon = epsilon
        self.names = {id(param): name for name, param in model.named_parameters()}
        self.feedback = {name: torch.zeros_like(param) for name, param in model.named_parameters()}

    def forward(self, module: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, Backward]:
        """Run ``module`` on ``a``; return its output and the map ``R_out -> R_a``."""
        if isinstance(module, nn.Sequential):
            return self._sequential(module, a)
        if isinstance(module, Residual):
            return self._residual(module, a)
        if isinstance(module, EPSILON_LAYERS):
            return self._epsilon(module, a)
        if isinstance(module, ACTIVATIONS):
            with torch.no_grad():
                output = module(a.clone())  # an in-place activation must not overwrite the kept z
            return output, lambda relevance: relevance
        if isinstance(module, GRADIENT_LAYERS):
            return self._gradient(module, a)
        raise TypeError(f"the reference LFP has no rule for {type(module).__name__}")

    def _sequential(self, module: nn.Sequential, a: torch.Tensor) -> tuple[torch.Tensor, Backward]:
        backwards = []
        for child in module:
            a, backward = self.forward(child, a)
            backwards.append(backward)

        def backward(relevance: torch.Tensor) -> torch.Tensor:
            for child_backward in reversed(backwards):
                relevance = child_backward(relevance)
            return relevance

        return a, backward

    def _residual(self, module: Residual, x: torch.Tensor) -> tuple[torch.Tensor, Backward]:
        main, main_backward = self.forward(module.main, x)
        skip, skip_backward = self.forward(module.shortcut, x)
        total = main + skip
        output, act_backward = self.forward(module.act, total)

        def backward(relevance: torch.Tensor) -> torch.Tensor:
            n = act_backward(relevance) / stab(total, self.epsilon)
            # y = a + b is linear in each summand: J_a^T n = n, so R_a = a * n and R_b = b * n
            return main_backward(main * n) + skip_backward(skip * n)

        return output, backward

    def _epsilon(self, module: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, Backward]:
        a = a.detach()
        a_leaf = a.clone().requires_grad_(True)
        params = list(module.parameters(recurse=False))
        with torch.enable_grad():
            z = module(a_leaf)

        def backward(relevance: torch.Tensor) -> torch.Tensor:
            n = relevance / stab(z.detach(), self.epsilon)
            grad_a, *grad_params = torch.autograd.grad(z, [a_leaf, *params], n)
            for param, grad in zip(params, grad_params, strict=True):
                self.feedback[self.names[id(param)]] += param.detach().abs() * grad
            return a * grad_a

        return z.detach(), backward

    @staticmethod
    def _gradient(module: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, Backward]:
        a_leaf = a.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            output = module(a_leaf)

        def backward(relevance: torch.Tensor) -> torch.Tensor:
            (carried,) = torch.autograd.grad(output, a_leaf, relevance)
            return carried

        return output.detach(), backward


def reference_lfp(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Any,
    reward_fn: Callable[[torch.Tensor, Any], torch.Tensor],
    epsilon: float,
) -> ReferenceResult:
    """Epsilon-LFP feedback of every parameter of ``model``, summed over the batch.

    The model's buffers (BatchNorm running statistics) are updated by the forward as a normal
    forward would update them; pass a copy when that matters.

    Args:
        model: a :class:`torch.nn.Sequential` (possibly nested) of supported layers and
            :class:`Residual` blocks.
        inputs: the batch.
        targets: passed to ``reward_fn``.
        reward_fn: ``reward_fn(outputs, targets)``, the reward at the outputs.
        epsilon: ε of every epsilon layer.
    """
    walker = _Walker(model, epsilon)
    outputs, backward = walker.forward(model, inputs)
    reward = reward_fn(outputs, targets)
    input_reward = backward(reward)
    return ReferenceResult(outputs=outputs, reward=reward, feedback=walker.feedback, input_reward=input_reward)
