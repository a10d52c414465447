r"""The ``vit`` preset: AttnLRP for vision transformers, with the reference's ε = 1 on layers."""

from __future__ import annotations

from ..rules import ADDITION_FUNCTIONS, DropoutMode, EpsilonRule, RuleMap, default_rules, extended_rules
from .registry import register_preset

VIT_EPSILON = 1.0
"""ε of the layers (linear, convolution, LayerNorm): the reference's ViT composite uses 1."""

SUM_EPSILON = 1e-8
"""ε of residual sums (the reference's ViT sums through lxt's ``add2``, whose ε is 1e-8) and of layer scale."""

VIT_ARCHITECTURES = (
    "vit_*",
    "deit*",
    "beit*",
    "eva*",
    "swin*",
    "cait*",
    "xcit*",
    "pit_*",
    "tnt_*",
    "crossvit*",
    "twins*",
    "flexivit*",
    "samvit*",
)
"""timm architecture name patterns that ``preset="auto"`` maps to ``vit``."""


@register_preset("vit", epsilon=VIT_EPSILON, architectures=VIT_ARCHITECTURES, module_types=("*Attention",))
def vit(epsilon: float = VIT_EPSILON, dropout: DropoutMode = "reference") -> RuleMap:
    r"""AttnLRP: ε-rule layers (ε = 1 as in the reference ViT), uniform q·kᵀ and A·v, softmax at x.

    - Linear layers, the patch embedding, LayerNorm and pooling: the epsilon rule with
      ``epsilon`` (the reference's ViT composite uses 1: a large ε damps the reward where a
      layer's output is small against it).
    - Residual sums and the position embedding's sum: the epsilon rule with
      \(\varepsilon = 10^{-8}\), as the reference's ``add2`` (never larger than ``epsilon``).
    - GELU and the other activations: identity.
    - \(q k^\top\), \(A v\) and other products of two signals: the uniform rule; softmax:
      AttnLRP's rule, which in the gradient formulation is the softmax's gradient; timm's fused
      ``F.scaled_dot_product_attention`` gets both at once (`lfpoptim.rules.attention`).
    - Layer scale (a parameter factor): the epsilon rule with \(10^{-8}\): each output has a
      single contribution, so ε has nothing to stabilise, and ε = 1 against CaiT's layer scale
      of \(10^{-5}\) would all but cut the residual branches off.

    Args:
        epsilon: ε of the layers; residual sums and layer scale use the smaller of it and \(10^{-8}\).
        dropout: how train-mode dropout treats reward.

    Returns:
        the rule map.
    """
    rules = default_rules(epsilon, dropout)
    rules.update(extended_rules(epsilon, dropout, sum_epsilon=min(epsilon, SUM_EPSILON)))
    rules.update(dict.fromkeys(ADDITION_FUNCTIONS, EpsilonRule(min(epsilon, SUM_EPSILON))))
    return rules
