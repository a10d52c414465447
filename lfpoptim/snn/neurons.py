r"""The leaky integrate-and-fire (LIF) neuron, as a function of one time step and as a stateful module.

With input current \(z_t\), membrane potential \(u_t\), decay \(\beta \in [0, 1]\) and
threshold \(\theta > 0\), one step of the neuron is

\[
r_t = [u_t > \theta], \qquad
u_{t+1} = \begin{cases}
    \beta u_t + z_t - r_t \theta & \text{reset by subtraction} \\
    \beta (1 - r_t) u_t + z_t & \text{reset to zero} \\
    \beta u_t + z_t & \text{no reset}
\end{cases}, \qquad
s_{t+1} = [u_{t+1} > \theta].
\]

The reset \(r_t\) is the spike the neuron emitted at the previous step, applied one step late:
these are the dynamics of snntorch's ``Leaky`` neuron with its default ``reset_delay=True``, so a
network of `LIF` neurons computes exactly what the same network of ``snntorch.Leaky`` neurons
computes. The spike has the step function's true derivative, zero: gradient descent gets no
signal through it, LFP's LIF rule (`lfpoptim.rules.lif`) does.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.overrides import handle_torch_function, has_torch_function

ResetMechanism = Literal["subtract", "zero", "none"]
"""How a neuron's membrane is reset after a spike: by subtracting the threshold, to zero, or not at all."""


class _Step(torch.autograd.Function):
    r"""\([x > 0]\) with the derivative of the step function: zero."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(grad)


def lif_step(
    current: torch.Tensor,
    membrane: torch.Tensor,
    beta: float | torch.Tensor,
    threshold: float | torch.Tensor,
    reset: ResetMechanism = "subtract",
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One time step of a layer of LIF neurons: ``(spikes, new_membrane)``.

    Computes \(u_{t+1}\) and \(s_{t+1}\) of the module description from the input current
    \(z_t\) and the membrane \(u_t\). The reset flag \(r_t = [u_t > \theta]\) is a constant
    for autograd, as in snntorch. The function takes part in torch's function overrides, so that
    the LFP engine applies the LIF rule to it (`lfpoptim.rules.lif.LIFRule`, preset ``"snn"``).

    Args:
        current: the input current \(z_t\), any shape.
        membrane: the membrane potential \(u_t\), shaped like ``current``.
        beta: the decay \(\beta\), a float or a tensor broadcasting against ``current``.
        threshold: the firing threshold \(\theta\), likewise.
        reset: ``"subtract"``, ``"zero"`` or ``"none"``.
    """
    if has_torch_function((current, membrane)):
        return handle_torch_function(
            lif_step, (current, membrane), current, membrane, beta, threshold, reset
        )  # all arguments positional: the LIF rule reads them by position
    if membrane.shape != current.shape:
        raise ValueError(
            f"the membrane has shape {tuple(membrane.shape)} but the input current has shape "
            f"{tuple(current.shape)}; start a new sequence with a zero membrane (LIF.reset_state())"
        )
    reset_flags = (membrane > threshold).to(current.dtype)
    if reset == "subtract":
        new_membrane = beta * membrane + current - reset_flags * threshold
    elif reset == "zero":
        new_membrane = beta * ((1 - reset_flags) * membrane) + current
    elif reset == "none":
        new_membrane = beta * membrane + current
    else:
        raise ValueError(f"reset must be one of {get_args(ResetMechanism)}, got {reset!r}")
    return _Step.apply(new_membrane - threshold), new_membrane


class LIF(nn.Module):
    r"""A layer of leaky integrate-and-fire neurons that keeps its membrane potential between calls.

    Call it once per time step with the input current. Stateful use (the membrane lives in the
    module) is the usual one: ``spikes = lif(current)``; call `reset_state` (or
    `lfpoptim.snn.reset_neurons` on the whole model) before every new sequence: a state left from
    another batch is an error, not silently discarded. Stateless use, as snntorch's
    ``init_hidden=False`` neurons: ``spikes, membrane = lif(current, membrane)``, where an empty
    membrane (snntorch's ``init_leaky()``) starts from rest.

    Args:
        beta: the decay \(\beta \in [0, 1]\): a float, or a tensor for one decay per neuron.
        threshold: the firing threshold \(\theta > 0\), a float or a tensor.
        reset: ``"subtract"`` (reset by subtraction, the reference's choice), ``"zero"`` or
            ``"none"``.
        return_membrane: stateful calls return ``(spikes, membrane)`` instead of the spikes
            (snntorch's ``output=True``).

    Attributes:
        beta: the decay \(\beta\), a buffer (a 0-d tensor for one shared decay).
        threshold: the firing threshold \(\theta\), a buffer.
        reset (ResetMechanism): the reset mechanism.
        return_membrane (bool): whether stateful calls return ``(spikes, membrane)``.
        membrane: the membrane potential after the last step, ``None`` before the first.

    Raises:
        ValueError: ``beta`` outside \([0, 1]\), a threshold that is not positive, or an unknown ``reset``.
    """

    beta: torch.Tensor
    threshold: torch.Tensor

    def __init__(
        self,
        beta: float | torch.Tensor = 0.9,
        threshold: float | torch.Tensor = 1.0,
        reset: ResetMechanism = "subtract",
        *,
        return_membrane: bool = False,
    ) -> None:
        super().__init__()
        beta = torch.as_tensor(beta, dtype=torch.get_default_dtype()).detach().clone()
        threshold = torch.as_tensor(threshold, dtype=torch.get_default_dtype()).detach().clone()
        if not bool(((beta >= 0) & (beta <= 1)).all()):
            raise ValueError(f"beta must lie in [0, 1], got {beta.tolist()}")
        if not bool((threshold > 0).all()):
            raise ValueError(f"threshold must be positive, got {threshold.tolist()}")
        if reset not in get_args(ResetMechanism):
            raise ValueError(f"reset must be one of {get_args(ResetMechanism)}, got {reset!r}")
        self.register_buffer("beta", beta)
        self.register_buffer("threshold", threshold)
        self.reset = reset
        self.return_membrane = return_membrane
        self.membrane: torch.Tensor | None = None

    def reset_state(self) -> None:
        r"""Forget the membrane potential: the next step starts from rest (\(u = 0\))."""
        self.membrane = None

    def forward(
        self, current: torch.Tensor, membrane: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One time step: the spikes (stateful), or ``(spikes, new_membrane)``.

        Args:
            current: the input current of this step.
            membrane: the membrane potential for a stateless call (an empty tensor starts from rest);
                ``None`` for a stateful call, which uses and updates `membrane` of the module.

        Returns:
            the spikes; ``(spikes, new_membrane)`` for a stateless call or with ``return_membrane``.

        Raises:
            ValueError: the membrane held from an earlier sequence is shaped unlike ``current``.
        """
        if membrane is not None:
            if membrane.numel() == 0:
                membrane = torch.zeros_like(current)
            return lif_step(current, membrane, self.beta, self.threshold, self.reset)
        previous = self.membrane
        if previous is None:
            previous = torch.zeros_like(current)
        elif previous.shape != current.shape:
            raise ValueError(
                f"this LIF layer holds a membrane of shape {tuple(previous.shape)} from an earlier sequence, "
                f"but the input current has shape {tuple(current.shape)}: call reset_state() "
                "(or lfpoptim.snn.reset_neurons(model)) before each new sequence"
            )
        spikes, self.membrane = lif_step(current, previous, self.beta, self.threshold, self.reset)
        if self.return_membrane:
            return spikes, self.membrane
        return spikes

    def extra_repr(self) -> str:
        """The neuron's settings, as its ``repr`` shows them.

        Returns:
            ``beta``, ``threshold`` (a number, or a tensor's shape) and ``reset``.
        """
        return f"beta={_describe(self.beta)}, threshold={_describe(self.threshold)}, reset={self.reset!r}"


def _describe(value: torch.Tensor) -> str:
    return f"{value.item():.4g}" if value.numel() == 1 else f"tensor of shape {tuple(value.shape)}"


def reset_neurons(module: nn.Module) -> int:
    """Reset every `LIF` layer in ``module`` (included) to rest; return how many there were.

    Args:
        module: the model (or a single `LIF`).

    Returns:
        the number of `LIF` layers reset.
    """
    count = 0
    for child in module.modules():
        if isinstance(child, LIF):
            child.reset_state()
            count += 1
    return count
