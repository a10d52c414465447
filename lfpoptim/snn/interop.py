"""snntorch interoperability: its ``Leaky`` neurons become `lfpoptim.snn.LIF` layers.

snntorch is optional (``pip install 'lfpoptim[snn]'``) and imported only here, when a conversion
is asked for. LFP does not use surrogate gradients, so a ``Leaky``'s ``spike_grad`` has no
counterpart; everything that shapes the forward pass is carried over or refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .neurons import LIF, ResetMechanism


def _snntorch() -> Any:
    try:
        import snntorch
    except ImportError as error:
        raise ImportError(
            "converting snntorch neurons needs snntorch: pip install 'lfpoptim[snn]' (or pip install snntorch)"
        ) from error
    return snntorch


def lif_from_snntorch(leaky: nn.Module) -> LIF:
    """The `LIF` layer that computes what an ``snntorch.Leaky`` neuron computes.

    Decay (clipped to [0, 1] as snntorch does), threshold and reset mechanism are copied; the
    ``output=True`` flag becomes ``return_membrane``. The state is not: the new layer starts from rest.

    Args:
        leaky: the ``snntorch.Leaky`` neuron to convert.

    Returns:
        a new `LIF` on the device of ``leaky``'s threshold.

    Raises:
        ImportError: snntorch is not installed.
        TypeError: ``leaky`` is not an ``snntorch.Leaky``.
        ValueError: the neuron uses a feature the LIF rule does not cover: learnable decay or
            threshold, graded spikes, inhibition, state quantisation, or ``reset_delay=False``.
    """
    snntorch = _snntorch()
    if not isinstance(leaky, snntorch.Leaky):
        raise TypeError(f"expected an lfpoptim.snn.LIF or an snntorch.Leaky neuron, got {type(leaky).__name__}")
    unsupported = {
        "learn_beta": isinstance(leaky.beta, nn.Parameter),
        "learn_threshold": isinstance(leaky.threshold, nn.Parameter),
        "graded_spikes_factor": isinstance(leaky.graded_spikes_factor, nn.Parameter)
        or bool((torch.as_tensor(leaky.graded_spikes_factor) != 1).any()),
        "inhibition": bool(leaky.inhibition),
        "state_quant": bool(leaky.state_quant),
        "reset_delay=False": not getattr(leaky, "reset_delay", True),
    }
    used = [name for name, is_used in unsupported.items() if is_used]
    if used:
        raise ValueError(f"the LIF rule does not cover snntorch.Leaky with {', '.join(used)}")
    reset: ResetMechanism = leaky.reset_mechanism
    neuron = LIF(
        beta=leaky.beta.detach().clamp(0, 1),
        threshold=leaky.threshold.detach(),
        reset=reset,
        return_membrane=bool(leaky.output),
    )
    return neuron.to(leaky.threshold.device)


def convert_snntorch(model: nn.Module) -> nn.Module:
    """Replace every ``snntorch.Leaky`` inside ``model`` by the equivalent `LIF`, in place; return ``model``.

    Forward code written for snntorch keeps working: a ``Leaky`` with ``init_hidden=True`` is
    called as ``spk = lif(cur)``, one without as ``spk, mem = lif(cur, mem)``, and `LIF` takes
    both forms (reset its state with `lfpoptim.snn.reset_neurons` instead of snntorch's
    ``utils.reset``). ``model`` itself may be a ``Leaky``: then its replacement is returned.

    Args:
        model: a module holding ``snntorch.Leaky`` neurons, or a ``Leaky`` itself.

    Returns:
        ``model``, converted in place, or the new `LIF` when ``model`` is a ``Leaky``.

    Raises:
        ImportError: snntorch is not installed.
        ValueError: a ``Leaky`` uses a feature the LIF rule does not cover (see `lif_from_snntorch`).
    """
    snntorch = _snntorch()
    if isinstance(model, snntorch.Leaky):
        return lif_from_snntorch(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, snntorch.Leaky):
                setattr(parent, name, lif_from_snntorch(child))
    return model
