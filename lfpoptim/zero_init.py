r"""All-zero parameters under LFP: why they cannot train, and what the optimizers do about them.

LFP's feedback is \(F_\theta = |\theta| \odot J_\theta^\top n\). A parameter tensor that is
entirely zero gets no feedback, so it never moves; worse, a unit whose contribution is zero gets
no reward (the epsilon rule shares reward in proportion to contributions), so a zero gain switches
off everything behind it. Standard initialisations create such tensors on purpose: biases (Linear
and convolution biases in many libraries, every BatchNorm/LayerNorm bias), and in timm's ResNets
the last BatchNorm weight of every residual block (``zero_init_last=True``), which starts each
block as the identity.

Both optimizers therefore take ``zero_parameters=``:

- ``"fill"`` (the default) gives every all-zero trainable tensor the magnitude `ZERO_FILL` at
  construction and says so in one `lfpoptim.analysis.ZeroParameterWarning`. One-dimensional
  tensors (biases, gains, layer scales) become \(+\)`ZERO_FILL`: a positive gain keeps the sign
  of what it scales, and a zero-initialised residual branch stays nearly off, as its initialiser
  intended, while reward can now reach it. Tensors of two or more dimensions (weight matrices,
  embeddings, tokens) become \(\pm\)`ZERO_FILL` with signs from a fixed generator, so that the
  outputs they feed do not all shift together (the global random state is not touched). With the
  default per-tensor scaling (``"grad_norm"``, or ``"normalized"``) every entry of a filled tensor
  has the same magnitude, so its first update is the unweighted factor \(J_\theta^\top n\) at the
  length of SGD's step: the fill only decides how far the initial function moves (by about
  `ZERO_FILL`), not how fast the tensor learns.
- ``"keep"`` leaves the model as it is (the reference implementation's behaviour) and warns that
  the listed tensors will not train.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Literal, get_args

import torch
from torch import nn

from .analysis import ZeroParameterWarning, zero_parameters

ZeroParameters = Literal["fill", "keep"]
"""What an optimizer does with all-zero trainable parameters at construction."""

ZERO_FILL = 1e-3
"""The magnitude ``zero_parameters="fill"`` gives every entry of an all-zero trainable tensor."""

MAX_NAMES_IN_WARNING = 10
"""How many parameter names the warning spells out before summarising the rest."""

SIGN_SEED = 0
"""Seed of the generator that draws the fill's signs for tensors of two or more dimensions."""


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_IN_WARNING])
    if len(names) > MAX_NAMES_IN_WARNING:
        shown += f" and {len(names) - MAX_NAMES_IN_WARNING} more"
    return shown


@torch.no_grad()
def fill_zero_parameters_(model: nn.Module, params: Iterable[torch.Tensor] | None = None) -> list[str]:
    r"""Give every all-zero trainable parameter of ``model`` the magnitude `ZERO_FILL`, in place.

    One-dimensional tensors get \(+\)`ZERO_FILL`, others \(\pm\)`ZERO_FILL` with signs from
    a generator seeded with `SIGN_SEED` (the same on every process, and the global random state is
    left alone).

    Args:
        model: the network.
        params: only fill these parameters (e.g. those an optimizer trains); all of the model's
            when ``None``.

    Returns:
        the names of the parameters filled, as `torch.nn.Module.named_parameters` gives them.
    """
    names = zero_parameters(model, params)
    wanted = set(names)
    generator = torch.Generator().manual_seed(SIGN_SEED)
    for name, param in model.named_parameters():
        if name not in wanted:
            continue
        if param.dim() <= 1:
            param.fill_(ZERO_FILL)
            continue
        signs = torch.randint(0, 2, param.shape, generator=generator).mul_(2).sub_(1)
        param.copy_(signs.to(dtype=param.dtype, device=param.device).mul_(ZERO_FILL))
    return names


def handle_zero_parameters(
    model: nn.Module, params: Iterable[torch.Tensor], mode: ZeroParameters, *, stacklevel: int = 3
) -> list[str]:
    """Fill or keep the all-zero trainable parameters among ``params``, and say which in one warning.

    Args:
        model: the network.
        params: the parameters the optimizer trains.
        mode: ``"fill"`` or ``"keep"``, see the module's docstring.
        stacklevel: as in `warnings.warn`; the default points at the line that built the optimizer.

    Returns:
        the names of the all-zero parameters found (and, for ``"fill"``, filled).

    Raises:
        ValueError: ``mode`` is neither ``"fill"`` nor ``"keep"``.
    """
    if mode not in get_args(ZeroParameters):
        raise ValueError(f"zero_parameters must be 'fill' or 'keep', got {mode!r}")
    if mode == "keep":
        names = zero_parameters(model, params)
        if names:
            warnings.warn(
                f"{len(names)} trainable parameter tensors are all zero and will not change under LFP "
                f"(feedback is proportional to |theta|): {_names(names)}; zero_parameters='fill' (the default) "
                "gives them a small magnitude, requires_grad_(False) freezes them",
                ZeroParameterWarning,
                stacklevel=stacklevel,
            )
        return names
    names = fill_zero_parameters_(model, params)
    if names:
        warnings.warn(
            f"set {len(names)} all-zero trainable parameter tensors to magnitude {ZERO_FILL:g} so that LFP can train "
            f"them: {_names(names)} (zero_parameters='keep' leaves them at zero)",
            ZeroParameterWarning,
            stacklevel=stacklevel,
        )
    return names


__all__ = ["SIGN_SEED", "ZERO_FILL", "ZeroParameters", "fill_zero_parameters_", "handle_zero_parameters"]
