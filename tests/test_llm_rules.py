r"""The ``llm`` and ``llm_attnlrp`` presets against independent computations: per layer, and lxt on whole models.

``llm`` (for training):

- LayerNorm and RMSNorm are layers: \(R_x = x \odot J^\top (R_y / \operatorname{stab}(y))\) with
  the norm's whole Jacobian \(J\), computed by ``torch.autograd.functional.jacobian`` on the plain module.
- Attention (GPT-2's and Llama's, eager and SDPA): each factor gets the gradient, so a whole
  attention block's input reward is \(x \odot J^\top (R / \operatorname{stab}(y))\) with its Jacobian.

``llm_attnlrp`` (AttnLRP):

- LayerNorm: the relevance of an explicit matrix \(W = \operatorname{diag}(w)(I - \tfrac1N
  \mathbf 1 \mathbf 1^\top) / \sigma\) per sample (AttnLRP's identity rule holds \(\sigma\)
  constant), \(R_x = x \odot W^\top (R_y / \operatorname{stab}(y))\), and the feedback of
  \(w\) and \(b\) written out.
- RMSNorm: with its scale constant, \(R_x = R_y\) up to ε.
- GPT-2's ``NewGELUActivation`` module gets the identity rule of ``F.gelu(approximate="tanh")``.
- Whole GPT-2, Llama, Qwen2 and Mistral models (eager and SDPA attention, grouped-query heads):
  the engine's \(J_\theta^\top n\) against plain autograd through the same model patched by
  lxt's efficient AttnLRP rules (``lxt.efficient``, its own patch maps), seeded with \(R / y\).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

from lfpoptim import SoftmaxLossReward, explain
from lfpoptim.engine import lfp_pass
from lfpoptim.presets import get_preset, select_preset
from lfpoptim.rules import CoverageCheck

transformers = pytest.importorskip("transformers")

TINY_EPSILON = 1e-12
"""ε for comparisons with lxt's efficient rules, which have none on layers."""

LXT_TOLERANCE = 2e-4
"""Relative to each tensor's largest entry. lxt computes RMSNorm in float32 and adds 1e-10 in its
identity rule's ratio; without its rules, plain gradients differ by 30% to 80%."""

VOCABULARY, LENGTH = 40, 7


def rules(epsilon: float = TINY_EPSILON, preset: str = "llm_attnlrp") -> CoverageCheck:
    return CoverageCheck(get_preset(preset).rules(epsilon), strict=True)


def random_reward(outputs: torch.Tensor, targets: object) -> torch.Tensor:
    return torch.randn(outputs.shape, generator=torch.Generator().manual_seed(1), dtype=outputs.dtype)


def reward_pass(
    model: nn.Module, inputs: torch.Tensor, epsilon: float = TINY_EPSILON, preset: str = "llm_attnlrp", **kwargs: Any
):
    params = list(model.parameters())
    targets = torch.zeros(inputs.shape[0], dtype=torch.long)
    return lfp_pass(
        model, inputs, targets, random_reward, params, rules=rules(epsilon, preset), reduction="sum", **kwargs
    )


def epsilon_layer_reward(module: nn.Module, x: torch.Tensor, reward: torch.Tensor, epsilon: float) -> torch.Tensor:
    r"""\(x \odot J^\top (R / \operatorname{stab}(y))\) with the module's Jacobian, sample by sample."""
    module = module.eval()
    y = module(x).detach()
    n = reward / stabilise(y, epsilon)
    relevance = []
    for b in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(lambda a: module(a[None])[0], x[b])
        jacobian = jacobian.reshape(y[b].numel(), x[b].numel())
        relevance.append(x[b] * (jacobian.T @ n[b].reshape(-1)).reshape(x[b].shape))
    return torch.stack(relevance)


# -- llm: per layer -------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_norms_are_epsilon_layers_with_their_whole_jacobian(norm: str) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    module = (nn.LayerNorm(6) if norm == "layer" else LlamaRMSNorm(6)).double()
    with torch.no_grad():
        for param in module.parameters():
            param.uniform_(0.5, 1.5)
    x = torch.randn(3, 6, dtype=torch.float64)
    epsilon = 1e-2
    result = reward_pass(module, x, epsilon, preset="llm", with_input_reward=True)
    torch.testing.assert_close(result.input_reward, epsilon_layer_reward(module, x, result.reward, epsilon))


class AttentionBlock(nn.Module):
    """A Hugging Face attention layer alone: hidden states in, hidden states out (positions for rotary)."""

    def __init__(self, family: str, attention: str) -> None:
        super().__init__()
        model = build(family, attention)
        self.layer = model.transformer.h[0].attn if family == "gpt2" else model.model.layers[0].self_attn
        self.rotary = None if family == "gpt2" else model.model.rotary_emb

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.rotary is None:
            return self.layer(hidden)[0]
        positions = torch.arange(hidden.shape[1])[None].expand(hidden.shape[0], -1)
        lowest = torch.finfo(hidden.dtype).min  # as Hugging Face's masks: -inf would meet a stabiliser at inf / inf
        causal = torch.full((hidden.shape[1],) * 2, lowest, dtype=hidden.dtype).triu(1)
        return self.layer(hidden, self.rotary(hidden, positions), causal[None, None])[0]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_attention_hands_each_factor_its_gradient(family: str, attention: str) -> None:
    block = AttentionBlock(family, attention)
    x = torch.randn(1, 4, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    result = reward_pass(block, x, preset="llm", with_input_reward=True)
    # with a negligible ε on its linear layers, the whole block hands on gradient x input
    expected = epsilon_layer_reward(block, x, result.reward, TINY_EPSILON)
    torch.testing.assert_close(result.input_reward, expected)
    attnlrp = reward_pass(block, x, preset="llm_attnlrp", with_input_reward=True)
    assert not torch.allclose(attnlrp.input_reward, expected, rtol=1e-2)  # the uniform rule would differ


# -- llm_attnlrp: per layer ------------------------------------------------------------------------------


def stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    return z + epsilon * (z.sign() + (z == 0).to(z.dtype))


# -- per layer ----------------------------------------------------------------------------------------
def test_layer_norm_relevance_matches_the_explicit_matrix() -> None:
    torch.manual_seed(0)
    width, epsilon = 6, 1e-3
    norm = nn.LayerNorm(width).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.3, 0.3)
    x = torch.randn(4, width, dtype=torch.float64)
    result = reward_pass(norm, x, epsilon, with_input_reward=True)
    y = norm(x).detach()
    n = result.reward / stabilise(y, epsilon)
    centring = torch.eye(width, dtype=torch.float64) - 1.0 / width
    sigma = (x.var(dim=1, unbiased=False) + norm.eps).sqrt()
    expected_input = torch.stack(
        [x[b] * ((torch.diag(norm.weight.detach()) @ centring / sigma[b]).T @ n[b]) for b in range(len(x))]
    )
    x_hat = (x - x.mean(dim=1, keepdim=True)) / sigma[:, None]
    torch.testing.assert_close(result.input_reward, expected_input)
    torch.testing.assert_close(result.grads[0], (x_hat * n).sum(0))  # J_w^T n
    torch.testing.assert_close(result.grads[1], n.sum(0))  # J_b^T n


def test_rms_norm_hands_its_reward_to_its_input() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 6, dtype=torch.float64)
    result = reward_pass(norm, x, with_input_reward=True)
    torch.testing.assert_close(result.input_reward, result.reward)
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    torch.testing.assert_close(result.grads[0], (x * scale * result.reward / norm(x).detach()).sum(0))


def test_gelu_module_gets_the_identity_rule_as_a_whole() -> None:
    from transformers.activations import NewGELUActivation

    torch.manual_seed(0)
    written_out = nn.Sequential(nn.Linear(5, 8), NewGELUActivation(), nn.Linear(8, 3)).double()
    fused = nn.Sequential(written_out[0], nn.GELU(approximate="tanh"), written_out[2])
    x = torch.randn(4, 5, dtype=torch.float64)
    expected = reward_pass(fused, x, 1e-6, with_input_reward=True)
    actual = reward_pass(written_out, x, 1e-6, with_input_reward=True)
    torch.testing.assert_close(actual.outputs, expected.outputs)
    torch.testing.assert_close(actual.input_reward, expected.input_reward)
    for grad, reference in zip(actual.grads, expected.grads, strict=True):
        torch.testing.assert_close(grad, reference)
    table = str(explain(written_out, x, preset="llm_attnlrp"))
    assert "NewGELUActivation  forward" in table
    assert "pow" not in table


# -- whole models against lxt ----------------------------------------------------------------------------
def build(family: str, attention: str) -> nn.Module:
    common = {"vocab_size": VOCABULARY, "attn_implementation": attention}
    llama_like = {
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32,
    }
    configs = {
        "gpt2": lambda: transformers.GPT2LMHeadModel(
            transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32, **common)
        ),
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**llama_like, **common)),
        "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**llama_like, **common)),
        "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**llama_like, **common)),
    }
    torch.manual_seed(0)
    model = configs[family]().double().eval()
    with torch.no_grad():  # non-zero biases, so that their feedback is compared too
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.uniform_(-0.1, 0.1)
    return model


def lxt_patch_map(family: str) -> dict[Any, Any]:
    from lxt.efficient import models as lxt_models
    from lxt.efficient.patches import gated_mlp_forward, patch_attention, patch_method, rms_norm_forward

    if family == "mistral":  # no map in lxt 2.1; Mistral's blocks are Llama's
        from transformers.models.mistral import modeling_mistral

        return {
            modeling_mistral.MistralMLP: partial(patch_method, gated_mlp_forward),
            modeling_mistral.MistralRMSNorm: partial(patch_method, rms_norm_forward),
            modeling_mistral: patch_attention,
        }
    return dict(getattr(lxt_models, family).attnLRP)


@contextmanager
def lxt_patched(family: str) -> Iterator[None]:
    """lxt's AttnLRP patches on the model family's classes, undone afterwards (lxt never undoes them)."""
    patch_map = lxt_patch_map(family)
    saved = []
    for target in patch_map:
        names = ("forward",) if isinstance(target, type) else ("eager_attention_forward", "ALL_ATTENTION_FUNCTIONS")
        saved.extend((target, name, vars(target).get(name)) for name in names)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for target, patch in patch_map.items():
                patch(target)
        yield
    finally:
        for target, name, value in saved:
            setattr(target, name, value)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "mistral"])
def test_auto_chooses_llm_and_strict_training_raises_nothing(family: str, attention: str) -> None:
    from lfpoptim import LFPOptimizer

    model = build(family, attention).train()
    assert select_preset(model).name == "llm"
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), base=torch.optim.AdamW, lr=1e-3, strict=True)
    tokens = torch.randint(0, VOCABULARY, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    optimizer.step({"input_ids": tokens}, tokens)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "mistral"])
def test_attnlrp_feedback_matches_lxt(family: str, attention: str) -> None:
    model = build(family, attention)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCABULARY, (2, LENGTH), generator=generator)
    targets = torch.randint(0, VOCABULARY, (2, LENGTH), generator=generator)
    params = [p for _, p in model.named_parameters()]
    reward = SoftmaxLossReward()
    ours = lfp_pass(model, {"input_ids": tokens}, targets, reward, params, rules=rules(), reduction="sum")
    with lxt_patched(family):
        logits = model(input_ids=tokens).logits
    seed = reward(logits.detach(), targets) / logits.detach()
    reference = torch.autograd.grad(logits, params, seed, allow_unused=True, materialize_grads=True)

    torch.testing.assert_close(ours.outputs, logits.detach())
    for (name, _), grad, expected in zip(model.named_parameters(), ours.grads, reference, strict=True):
        scale = expected.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(grad / scale, expected / scale, rtol=0, atol=LXT_TOLERANCE, msg=name)


def test_lxt_patches_are_needed_to_match() -> None:
    """The comparison above can fail: without lxt's rules, plain gradients differ from LFP's."""
    model = build("llama", "eager")
    tokens = torch.randint(0, VOCABULARY, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    params = list(model.parameters())
    reward = SoftmaxLossReward()
    ours = lfp_pass(model, {"input_ids": tokens}, tokens, reward, params, rules=rules(), reduction="sum")
    logits = model(input_ids=tokens).logits
    seed = reward(logits.detach(), tokens) / logits.detach()
    plain = torch.autograd.grad(logits, params, seed)
    errors = [float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours.grads, plain, strict=True)]
    assert max(errors) > 100 * LXT_TOLERANCE
