r"""The ``llm`` preset: AttnLRP for Hugging Face causal language models (GPT-2, Llama, Qwen2, Mistral).

Which rule each operation of these models gets (``lfpoptim.explain`` prints it per model):

- token and position embeddings (``F.embedding``): epsilon (a lookup is a layer whose input is one-hot);
- ``F.linear``, GPT-2's ``Conv1D`` (``torch.addmm``), the tied output layer: epsilon;
- ``F.layer_norm`` (GPT-2): AttnLRP's identity rule on \(\sigma\), then epsilon
  (`lfpoptim.rules.LayerNormRule`);
- RMSNorm (Llama, Qwen2, Mistral): its ``torch.rsqrt`` scale is a constant
  (`lfpoptim.rules.ConstantScaleRule`), its weight a parameter factor (epsilon);
- rotary embeddings \(q \cos + \operatorname{rot}(q) \sin\): constant factors, then epsilon on the
  sum (a fixed rotation);
- residual sums: epsilon with ε = 1e-8;
- \(q k^\top\) and \(A v\) (eager attention) and the fused ``F.scaled_dot_product_attention`` (SDPA;
  causal, grouped-query): the uniform rule of AttnLRP, gradients of \(q, k, v\) times
  \(\tfrac14, \tfrac14, \tfrac12\); softmax: AttnLRP's softmax rule (its gradient);
- SiLU, GELU, and GPT-2's ``NewGELUActivation`` module as a whole: identity;
- SwiGLU's \(\operatorname{silu}(g) \odot u\): the uniform rule;
- dropout: the optimizer's ``dropout`` mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..rules import (
    ADDITION_FUNCTIONS,
    DropoutMode,
    EpsilonRule,
    IdentityActivationRule,
    RuleMap,
    default_rules,
    extended_rules,
)
from ..rules.modules import ModuleClass
from ..rules.normalization import ConstantScaleRule, LayerNormRule
from .registry import register_preset

LLM_EPSILON = 1e-6
"""ε of the layers (embeddings, linear layers, norms)."""

SUM_EPSILON = 1e-8
"""ε of residual sums and element-wise parameter factors (RMSNorm's weight), as in the ``vit`` preset."""

ELEMENTWISE_ACTIVATION_MODULES = ("NewGELUActivation", "GELUTanh", "FastGELUActivation", "QuickGELUActivation")
"""Hugging Face activation modules written as several torch functions: each gets the identity rule as a whole."""

CAUSAL_LM_MODULES = ("*ForCausalLM", "*LMHeadModel", "*DecoderLayer", "GPT2Block")
"""Module class name patterns that make ``preset="auto"`` choose ``llm``."""


@register_preset("llm", epsilon=LLM_EPSILON, module_types=CAUSAL_LM_MODULES, priority=10)
def llm(epsilon: float = LLM_EPSILON, dropout: DropoutMode = "reference") -> RuleMap:
    """AttnLRP for causal language models: embeddings, Conv1D, LayerNorm/RMSNorm, rotary, attention, gated MLPs.

    The ``vit`` preset's rules (epsilon on layers, uniform on products, AttnLRP softmax and fused
    attention) with ε = 1e-6 on layers, plus the epsilon rule on embeddings and ``addmm``,
    AttnLRP's identity rule on the normalisations, and the identity rule on activation modules
    written out of several functions. See the module docstring for the table.

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
    return rules  # type: ignore[return-value]  (module keys next to function keys)
