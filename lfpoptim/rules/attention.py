r"""Attention: the softmax and fused scaled dot-product attention, per AttnLRP.

**Softmax.** AttnLRP (Achtibat et al., ICML 2024, Proposition 3.1) hands the reward of
\(s = \operatorname{softmax}(x)\) to its input by a Taylor decomposition at \(x\) (with bias):

\[
R_x = x \odot \bigl(R_s - s \odot \textstyle\sum_j R_{s,j}\bigr).
\]

With \(R_s = s \odot g_s\) and \(g_x = R_x / x\) this is
\(g_x = s \odot g_s - s \sum_j s_j g_{s,j}\), exactly the gradient of the softmax. So in
LFP's gradient formulation the softmax rule is the softmax's own backward, and lxt's efficient
implementation does not touch it either; `SoftmaxRule` only names it (for `lfpoptim.explain`).
Masked positions (\(x = -\infty\), \(s = 0\)) receive no reward.

**Scaled dot-product attention** \(y = \operatorname{softmax}(q k^\top \cdot c + m)\, v\) is two
products of signals and a softmax. The uniform rule halves the gradient at both products, so
\(v\) receives half of plain backpropagation's gradient and \(q\) and \(k\) a quarter (the
attention weights' half, halved again at \(q k^\top\)). lxt applies exactly these factors to the
query, key and value before Hugging Face's attention functions (``divide_gradient`` by 4, 4, 2);
`ScaledDotProductAttentionRule` does the same around ``F.scaled_dot_product_attention``, so
timm's fused attention stays fused and fast, and its backward is the explicit attention's (the
additive mask \(m\) and the scale \(c\) are constants: no reward stays with them).

Attention dropout (``dropout_p > 0`` in training) is applied by the fused kernel, whose backward
lets reward pass conservatively through the kept weights. In ``"reference"`` dropout mode
(`DropoutRule`) kept units' reward is scaled by \(1/(1-p)\) instead, which a fused kernel cannot
do, so that case runs the attention explicitly with a reference-mode dropout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ._lxt import divide_gradient
from .base import TorchFunction, Trace
from .dropout import DropoutMode

_SDPA_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS: dict[str, Any] = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None}


@dataclass(frozen=True)
class SoftmaxRule:
    """AttnLRP's softmax rule: in the gradient formulation, the softmax's own gradient (see above).

    Attributes:
        name: how `lfpoptim.explain` calls the rule.
    """

    name: str = "softmax (AttnLRP)"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        trace.consume(args, kwargs, inplace=False)
        return func(*args, **kwargs)


@dataclass(frozen=True)
class ScaledDotProductAttentionRule:
    r"""AttnLRP for ``F.scaled_dot_product_attention``: gradients of \(q, k, v\) times \(\tfrac14, \tfrac14, \tfrac12\).

    Attributes:
        dropout: how attention dropout treats reward, as in `DropoutRule`.
        name: how `lfpoptim.explain` calls the rule.
    """

    dropout: DropoutMode = "reference"
    name: str = "attention (AttnLRP)"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        trace.consume(args, kwargs, inplace=False)
        bound = dict(zip(_SDPA_NAMES, args, strict=False))
        bound.update(kwargs)
        query, key, value = bound.pop("query"), bound.pop("key"), bound.pop("value")
        query = divide_gradient(query, 4) if query.requires_grad else query
        key = divide_gradient(key, 4) if key.requires_grad else key
        value = divide_gradient(value, 2) if value.requires_grad else value
        if self.dropout == "reference" and bound.get("dropout_p", 0.0) > 0:
            return _explicit_attention(query, key, value, **{**_SDPA_DEFAULTS, **bound})
        return func(query, key, value, **bound)


def _explicit_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    r"""``F.scaled_dot_product_attention`` written out, with a reference-mode dropout on the weights."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeats = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(repeats, dim=-3)
        value = value.repeat_interleave(repeats, dim=-3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = (query * scale) @ key.transpose(-2, -1)
    if is_causal:
        length, source = query.shape[-2], key.shape[-2]
        causal = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        is_boolean = attn_mask.dtype == torch.bool
        scores = scores.masked_fill(~attn_mask, float("-inf")) if is_boolean else scores + attn_mask
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=True)
    weights.register_hook(lambda grad: grad / (1.0 - dropout_p))
    return weights @ value
