"""Modules that lfpoptim ships for models that gradient descent cannot train."""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import handle_torch_function, has_torch_function_unary


def heaviside(x: torch.Tensor) -> torch.Tensor:
    r"""The unit step \(H(x) = [x > 0]\), with a zero gradient everywhere.

    Autograd sees a constant, so gradient descent cannot train through it. Under LFP the
    activation's identity rule carries reward through it unchanged. The function takes part in
    torch's function overrides so that the LFP engine can recognise it.

    Args:
        x: any tensor.

    Returns:
        ones where ``x > 0``, zeros elsewhere, in ``x``'s dtype and shape.
    """
    if has_torch_function_unary(x):
        return handle_torch_function(heaviside, (x,), x)
    return (x > 0).to(x.dtype)


class Heaviside(nn.Module):
    """Module form of `heaviside`: a spiking-style step activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply `heaviside`.

        Args:
            x: any tensor.

        Returns:
            ``heaviside(x)``.
        """
        return heaviside(x)
