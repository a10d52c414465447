r"""The LIF rule: LFP through leaky integrate-and-fire neurons, across time steps.

A layer of LIF neurons (`lfpoptim.snn.lif_step`) takes the current \(z_t = f(x_t; \theta)\) of
a parametrised layer and its membrane \(u_t\) to a new membrane \(u_{t+1}\) and spikes
\(s_{t+1} = [u_{t+1} > \theta_{\text{fire}}]\). Write \(\rho_t\) for the charge the reset removed,
so that \(u_{t+1} + \rho_t = \beta u_t + z_t\) is the potential before the reset
(\(\rho_t = r_t \theta_{\text{fire}}\) for reset by subtraction, \(r_t \beta u_t\) for reset to
zero, 0 without reset). The reference implementation (``lfprop``'s ``propagator_snn``) hands
reward through one step as follows, and this rule does the same:

1. The spike passes its reward to the membrane unchanged (the identity rule of activations), and
   the membrane also holds the reward carried back from the next step:
   \(R_{u_{t+1}} = R_{s_{t+1}} + R^{\text{carried}}_{u_{t+1}}\).
2. It is normalised by the magnitudes of the old potential and of the change the step made to it
   apart from the reset,

    \[
    n_t = \frac{R_{u_{t+1}}}{\lvert u_t \rvert + \lvert u_{t+1} + \rho_t - u_t \rvert + \varepsilon} .
    \]

3. The current and the old membrane receive their contributions:
   \(R_{z_t} = z_t \odot n_t\), so the layer hands \(x_t \odot J_x^\top n_t\) to its input and
   its parameters get \(|\theta| \odot J_\theta^\top n_t\); and the membrane of the previous step
   receives \(R^{\text{carried}}_{u_t} = \beta\, u_t \odot n_t\) (reset by subtraction, none),
   where \(\beta u_t\) is what \(u_t\) contributed to \(u_{t+1}\).
4. The parameters are shared by all steps, so their feedback is summed over time.

The reference implements reset by subtraction only. Reset to zero follows from the same
principle: the reset wipes the old potential, so a neuron that fired at step \(t - 1\) carries no
reward back through it, \(R^{\text{carried}}_{u_t} = \beta (1 - r_t)\, u_t \odot n_t\) (the
derivative of \(u_{t+1}\) in \(u_t\), as snntorch's forward has it); the denominator is the
same, built on the potential before the reset.

**Gradient formulation.** In the engine's single backward pass a tensor \(x\) carries
\(g_x = R_x / x\). The step's autograd function receives \(g_{s}\) and \(g_{u_{t+1}}\),
recovers \(R_{u_{t+1}} = s_{t+1} \odot g_{s} + u_{t+1} \odot g_{u_{t+1}}\), and returns
\(n_t\) to the current and \(\beta n_t\) (times \(1 - r_t\) for reset to zero) to the old
membrane, the gradients whose products with \(z_t\) and \(u_t\) are the rewards of step 3. The
normalisation replaces the epsilon stabiliser of the layer that produced \(z_t\): the rule does
not report its read of \(z_t\) to the engine, which therefore adds no stabiliser on this path.
Every step is one node of the autograd graph, linked to the next through the membrane, so autograd
itself orders the steps backwards in time.

**The output.** At the model's output the reward of a silent neuron (\(s = 0\)) must reach its
membrane too, which no gradient through \(s\) can carry. As for any activation at the output, the
engine starts the backward pass at the activation's input: the LIF rule records every step's
spikes as an activation of its membrane, and `SpikeStackRule` records ``torch.stack`` of such spikes
over time (the usual output of a spiking network, time × batch × classes) as an activation of the
stacked membranes. The engine then seeds \(R / u\) at the membranes, and
\(R_{u} = u \odot g_u = R\) for every neuron, spiking or not (not where \(u = 0\) exactly,
which carries nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .base import TorchFunction, Trace
from .epsilon import stabilise

MEMBRANE_ATTRIBUTE = "_lfpoptim_membrane"
"""Attribute on the spikes the LIF rule returns: the membrane they were fired from (read by `SpikeStackRule`)."""


@dataclass(frozen=True)
class _LIFSettings:
    """What one LIF step computes with, apart from its tensors: the neuron's own forward and constants."""

    step: TorchFunction
    beta: float | torch.Tensor
    threshold: float | torch.Tensor
    reset: str
    epsilon: float


class _LIFStepFeedback(torch.autograd.Function):
    """One LIF step: the neuron's own forward, the LIF rule backward (see the module description)."""

    @staticmethod
    def forward(
        ctx: Any, current: torch.Tensor, membrane: torch.Tensor, settings: _LIFSettings
    ) -> tuple[torch.Tensor, torch.Tensor]:
        spikes, new_membrane = settings.step(current, membrane, settings.beta, settings.threshold, settings.reset)
        ctx.save_for_backward(current, membrane, new_membrane)
        ctx.settings = settings
        ctx.set_materialize_grads(False)
        return spikes, new_membrane

    @staticmethod
    def backward(
        ctx: Any, grad_spikes: torch.Tensor | None, grad_membrane: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        if grad_spikes is None and grad_membrane is None:
            return None, None, None
        current, membrane, new_membrane = ctx.saved_tensors
        settings: _LIFSettings = ctx.settings
        beta, threshold = settings.beta, settings.threshold
        # reward at the new membrane: from the spikes (identity) and carried back from the next step
        reward = torch.zeros_like(new_membrane) if grad_membrane is None else new_membrane * grad_membrane
        if grad_spikes is not None:
            reward += (new_membrane > threshold).to(reward.dtype) * grad_spikes
        # |u_t| + |u_{t+1} + rho_t - u_t|, where u_{t+1} + rho_t - u_t = z_t - (1 - beta) u_t
        denominator = (current - (1 - beta) * membrane).abs_().add_(membrane.abs())
        normalised = reward.div_(stabilise(denominator, settings.epsilon))
        grad_membrane_before = None
        if ctx.needs_input_grad[1]:
            grad_membrane_before = beta * normalised
            if settings.reset == "zero":
                grad_membrane_before = grad_membrane_before * (membrane <= threshold).to(normalised.dtype)
        grad_current = normalised if ctx.needs_input_grad[0] else None
        return grad_current, grad_membrane_before, None


@dataclass(frozen=True)
class LIFRule:
    """The LIF rule for `lfpoptim.snn.lif_step`, called as ``lif_step(current, membrane, beta, threshold, reset)``.

    Attributes:
        epsilon: the stabiliser ε added to the rule's denominator.
        name: how `lfpoptim.explain` calls the rule.
    """

    epsilon: float = 1e-6
    name: str = "lif"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        current, membrane, beta, threshold, reset = args
        if not (current.requires_grad or membrane.requires_grad):
            return func(*args, **kwargs)
        if membrane.shape != current.shape:  # let the function raise its own error
            return func(*args, **kwargs)
        settings = _LIFSettings(func, beta, threshold, reset, self.epsilon)
        spikes, new_membrane = _LIFStepFeedback.apply(current, membrane, settings)
        setattr(spikes, MEMBRANE_ATTRIBUTE, new_membrane)
        trace.record_activation(spikes, new_membrane)
        return spikes, new_membrane


@dataclass(frozen=True)
class SpikeStackRule:
    """``torch.stack`` that knows stacked spikes are an activation of the stacked membranes.

    A stack of spikes that the LIF rule produced is recorded with the engine as an activation of
    the stack of their membranes, so that when it is the model's output the backward pass starts at
    the membranes (see the module description). Any other stack, and a stack of spikes that is not
    the output, is an ordinary ``torch.stack``: the reward moves through it as a gradient would.

    Attributes:
        name: how `lfpoptim.explain` calls the rule.
    """

    name: str = "spike stack"

    def describe(self, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """What this call gets: ``spikes of the stacked membranes``, or ``gradient`` for other tensors.

        Args:
            func: the intercepted torch function (``torch.stack``).
            args: its positional arguments.
            kwargs: its keyword arguments.

        Returns:
            the label `lfpoptim.explain` shows for the call.
        """
        tensors = args[0] if args else kwargs.get("tensors")
        return "spikes of the stacked membranes" if _membranes(tensors) is not None else "gradient"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        tensors = args[0] if args else kwargs.get("tensors")
        trace.consume(args, kwargs, inplace=False)
        output = func(*args, **kwargs)
        membranes = _membranes(tensors)
        if membranes is not None and "out" not in kwargs:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            trace.record_activation(output, torch.stack(membranes, dim))
        return output


def _membranes(tensors: Any) -> list[torch.Tensor] | None:
    """The membranes behind a sequence of spike tensors, or ``None`` unless every one has its membrane."""
    if not isinstance(tensors, Sequence) or not tensors:
        return None
    membranes = [getattr(tensor, MEMBRANE_ATTRIBUTE, None) for tensor in tensors]
    if any(membrane is None for membrane in membranes):
        return None
    return membranes
