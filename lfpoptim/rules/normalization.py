r"""AttnLRP's identity rule for normalisations: the scale a norm divides by is a constant of the backward pass.

LayerNorm \(y = \frac{x - \bar x}{\sigma(x)}\, w + b\) and RMSNorm
\(y = \frac{x}{\operatorname{rms}(x)}\, w\) divide by a statistic of their own input. AttnLRP
(Achtibat et al., ICML 2024, Proposition 3.4) hands the reward through the division by the
identity rule, which in the gradient formulation means holding \(\sigma\) (or the RMS) constant
in the backward pass, as lxt's ``layer_norm_forward`` and ``rms_norm_forward`` do with a
``stop_gradient``. What remains is linear in \(x\): the centring \(x - \bar x\), the element-wise
weight \(w\) and the bias \(b\) share the reward as the epsilon rule does.

- `LayerNormRule` runs ``F.layer_norm`` fused and gives it the backward
  \(g_x = \bigl(h - \overline{h}\bigr) / \sigma\) with \(h = w \odot g_y\) (the full
  LayerNorm gradient less the term through \(\sigma(x)\)); the output gets the epsilon rule's
  stabiliser, so \(w\) and \(b\) receive the feedback of a layer with parameters.
- `ConstantScaleRule` on ``torch.rsqrt`` detaches the result: Hugging Face's RMSNorm computes
  \(x \cdot \operatorname{rsqrt}(\overline{x^2} + \varepsilon)\), and with the scale detached
  the product is a signal times a constant, which moves the reward unchanged; the weight that
  follows is a parameter factor (epsilon rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .base import TorchFunction, Trace
from .epsilon import mark_output

_LAYER_NORM_NAMES = ("input", "normalized_shape", "weight", "bias", "eps")


class _LayerNormIdentity(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        shape_and_eps: tuple[Sequence[int], float],
    ) -> torch.Tensor:
        normalized_shape, eps = shape_and_eps
        ctx.save_for_backward(x, weight)
        ctx.dims = tuple(range(-len(normalized_shape), 0))
        ctx.eps = eps
        ctx.has_bias = bias is not None
        return F.layer_norm(x, normalized_shape, weight, bias, eps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        dims = ctx.dims
        variance, mean = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
        inverse_std = variance.add_(ctx.eps).rsqrt_()
        leading = tuple(range(x.dim() - len(dims)))
        grad_weight = grad_bias = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = (grad * (x - mean) * inverse_std).sum(dim=leading)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=leading)
        grad_x = None
        if ctx.needs_input_grad[0]:
            scaled = grad * weight if weight is not None else grad
            grad_x = (scaled - scaled.mean(dim=dims, keepdim=True)).mul_(inverse_std)
        return grad_x, grad_weight, grad_bias, None


@dataclass(frozen=True)
class LayerNormRule:
    r"""``F.layer_norm`` with \(\sigma(x)\) constant in the backward pass (AttnLRP), then the epsilon rule.

    Attributes:
        epsilon: the stabiliser ε at the output (the layer's weight and bias are parameters).
        name: how `lfpoptim.explain` calls the rule.
    """

    epsilon: float = 1e-6
    name: str = "layer norm (AttnLRP identity, ε-rule)"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        trace.consume(args, kwargs, inplace=False)
        bound = {"weight": None, "bias": None, "eps": 1e-5, **dict(zip(_LAYER_NORM_NAMES, args, strict=False))}
        bound.update(kwargs)
        x = bound["input"]
        tensors = (x, bound["weight"], bound["bias"])
        if not any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
            return func(*args, **kwargs)
        shape = bound["normalized_shape"]
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        output = _LayerNormIdentity.apply(x, bound["weight"], bound["bias"], (shape, float(bound["eps"])))
        return mark_output(trace, output, self.epsilon)


@dataclass(frozen=True)
class ConstantScaleRule:
    """The result of ``func`` (``torch.rsqrt`` of a norm's mean square) as a constant of the backward pass.

    Attributes:
        name: how `lfpoptim.explain` calls the rule.
    """

    name: str = "constant (AttnLRP identity for normalisation)"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return func(*args, **kwargs).detach()
