r"""Presets for Hugging Face causal language models (GPT-2, Llama, Qwen2, Mistral): ``llm`` and ``llm_attnlrp``.

``llm`` (chosen by ``preset="auto"``) is made for training; ``llm_attnlrp`` is AttnLRP exactly as
lxt's efficient rules for these families (its patch maps), for conservative reward. Which rule
each operation gets (``lfpoptim.explain`` prints it per model):

- token and position embeddings (``F.embedding``): epsilon (a lookup is a layer whose input is
  one-hot); ``F.linear``, GPT-2's ``Conv1D`` (``torch.addmm``) and the tied output layer: epsilon;
- LayerNorm (``F.layer_norm``) and RMSNorm (the ``*RMSNorm`` modules, as one operation):
  ``llm``: epsilon, a layer with parameters whose whole Jacobian carries the reward (as the
  ``vit`` preset and the reference's ViT treat LayerNorm); ``llm_attnlrp``: AttnLRP's identity
  rule, the norm's scale a constant of the backward pass (`lfpoptim.rules.LayerNormRule`,
  `lfpoptim.rules.ConstantScaleRule` on ``torch.rsqrt``), then epsilon;
- rotary embeddings \(q \cos + \operatorname{rot}(q) \sin\): constant factors, then epsilon on
  the sum (a fixed rotation); residual sums: epsilon with ε = 1e-8;
- \(q k^\top\), \(A v\) (eager attention) and the fused ``F.scaled_dot_product_attention`` (SDPA;
  causal, grouped-query): ``llm``: each factor receives the reward of the other held fixed,
  the gradient (`lfpoptim.rules.ProductRule` with ``signals="gradient"``, `lfpoptim.rules.GradientAttentionRule`);
  ``llm_attnlrp``: AttnLRP's uniform rule, gradients of \(q, k, v\) times
  \(\tfrac14, \tfrac14, \tfrac12\); softmax: AttnLRP's softmax rule (its gradient), in both;
- SiLU, GELU and GPT-2's ``NewGELUActivation`` module as a whole: identity;
- SwiGLU's \(\operatorname{silu}(g) \odot u\): AttnLRP's uniform rule, in both;
- dropout: the optimizer's ``dropout`` mode.

``docs/language-models.md`` gives the measurements behind ``llm``'s two departures from AttnLRP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..rules import (
    ADDITION_FUNCTIONS,
    ATTENTION_FUNCTIONS,
    MATMUL_FUNCTIONS,
    DropoutMode,
    EpsilonRule,
    IdentityActivationRule,
    ProductRule,
    RuleMap,
    default_rules,
    extended_rules,
)
from ..rules.bilinear import GradientAttentionRule
from ..rules.modules import ModuleClass
from ..rules.normalization import ConstantScaleRule, LayerNormRule
from .registry import register_preset

LLM_EPSILON = 1e-6
"""ε of the layers (embeddings, linear layers, norms)."""

SUM_EPSILON = 1e-8
"""ε of residual sums and element-wise parameter factors (RMSNorm's weight), as in the ``vit`` preset."""

ELEMENTWISE_ACTIVATION_MODULES = ("NewGELUActivation", "GELUTanh", "FastGELUActivation", "QuickGELUActivation")
"""Hugging Face activation modules written as several torch functions: each gets the identity rule as a whole."""

CAUSAL_LM_MODULES = (
    "*ForCausalLM",
    "*LMHeadModel",
    "GPT2Block",
    "LlamaDecoderLayer",
    "Qwen2DecoderLayer",
    "MistralDecoderLayer",
)
"""Module class name patterns that make ``preset="auto"`` choose ``llm``: Hugging Face causal LMs and their blocks.

``torch.nn.TransformerDecoderLayer`` is not one of them (its fused attention has no rule here)."""


RMS_NORM_MODULES = "*RMSNorm"
"""Module class name pattern of RMSNorm layers (``LlamaRMSNorm``, ``Qwen2RMSNorm``, ``MistralRMSNorm``)."""


@register_preset("llm_attnlrp", epsilon=LLM_EPSILON)
def llm_attnlrp(epsilon: float = LLM_EPSILON, dropout: DropoutMode = "reference") -> RuleMap:
    """AttnLRP as lxt's efficient rules for causal LMs: identity rule on norms, uniform rule on attention.

    The ``vit`` preset's rules (epsilon on layers, uniform on products, AttnLRP softmax and fused
    attention) with ε = 1e-6 on layers, plus the epsilon rule on embeddings and ``addmm``,
    AttnLRP's identity rule on LayerNorm and RMSNorm, and the identity rule on activation
    modules written out of several functions. See the module docstring for the table.

    Args:
        epsilon: ε of the layers; residual sums and parameter factors use the smaller of it and 1e-8.
        dropout: how train-mode dropout treats reward.

    Returns:
        the rule map.
    """
    sum_epsilon = min(epsilon, SUM_EPSILON)
    rules = default_rules(epsilon, dropout)
    rules.update(extended_rules(epsilon, dropout, sum_epsilon=sum_epsilon))
    rules.update(dict.fromkeys(ADDITION_FUNCTIONS, EpsilonRule(sum_epsilon)))
    rules.update(dict.fromkeys((F.embedding, torch.addmm, torch.Tensor.addmm), EpsilonRule(epsilon)))
    rules[F.layer_norm] = LayerNormRule(epsilon)
    rules.update(dict.fromkeys((torch.rsqrt, torch.Tensor.rsqrt), ConstantScaleRule()))
    rules.update(dict.fromkeys(map(ModuleClass, ELEMENTWISE_ACTIVATION_MODULES), IdentityActivationRule()))
    return rules


@register_preset("llm", epsilon=LLM_EPSILON, module_types=CAUSAL_LM_MODULES, priority=10)
def llm(epsilon: float = LLM_EPSILON, dropout: DropoutMode = "reference") -> RuleMap:
    """For training causal LMs: ``llm_attnlrp`` with norms as epsilon layers and attention's products by gradient.

    Args:
        epsilon: ε of the layers; residual sums and parameter factors use the smaller of it and 1e-8.
        dropout: how train-mode dropout treats reward.

    Returns:
        the rule map.
    """
    rules = llm_attnlrp(epsilon, dropout)
    for func in (F.layer_norm, torch.rsqrt, torch.Tensor.rsqrt):
        del rules[func]
    rules[F.layer_norm] = EpsilonRule(epsilon)
    rules[ModuleClass(RMS_NORM_MODULES)] = EpsilonRule(epsilon)
    rules.update(dict.fromkeys(MATMUL_FUNCTIONS, ProductRule(epsilon, signals="gradient")))
    rules.update(dict.fromkeys(ATTENTION_FUNCTIONS, GradientAttentionRule()))
    return rules
