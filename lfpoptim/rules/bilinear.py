r"""Attention's products without the uniform split: each factor receives the reward of the other held fixed.

AttnLRP's uniform rule (`lfpoptim.rules.ProductRule`, `lfpoptim.rules.ScaledDotProductAttentionRule`)
halves the reward at \(q k^\top\) and at \(A v\), so that the two factors' shares add up to the
product's reward. In the gradient formulation that scales the gradients reaching \(q, k, v\) by
\(\tfrac14, \tfrac14, \tfrac12\). Training a language model, those factors weaken the attention
branch against the residual stream in every block, and the model learns more slowly than with
gradients (measured in ``docs/language-models.md``: a 2-layer GPT-2 on characters reaches a
validation cross-entropy 1.13x AdamW's with the split and 1.08x without it).

`GradientAttentionRule` (and, for ``a @ b`` and ``a * b``, `lfpoptim.rules.ProductRule` with
``signals="gradient"``) treat a product of two signals as the epsilon rule treats a layer whose
weights are the other factor, held fixed: \(R_a = a \odot \partial y / \partial a^\top (R / y)\) for
each factor in turn. In the gradient formulation that is the product's own gradient, unchanged.
Each factor then receives the whole reward, so the product is not conservative (the factors
together receive \(2R\)); products with a parameter or a constant keep the rules of
`lfpoptim.rules.ProductRule` (epsilon; gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import TorchFunction, Trace


@dataclass(frozen=True)
class GradientAttentionRule:
    r"""``F.scaled_dot_product_attention`` with its own backward: \(q, k, v\) each receive the whole reward.

    Train-mode attention dropout is the fused kernel's, whose backward scales kept weights' reward
    by \(1/(1-p)\): the ``"reference"`` dropout mode.

    Attributes:
        name: how `lfpoptim.explain` calls the rule.
    """

    name: str = "attention (gradient of each factor)"

    def __call__(self, trace: Trace, func: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        trace.consume(args, kwargs, inplace=False)
        return func(*args, **kwargs)
