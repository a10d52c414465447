r"""AttnLRP in the engine against an explicit, relevance-by-relevance implementation.

The explicit side never uses the gradient formulation: every operation of a tiny timm ViT is a
custom autograd function whose backward receives the *relevance* R of its output and returns
the relevance of its inputs, as the reference implementation (``lfprop`` on ``lxt``'s explicit
rules) computes it:

- linear layers, the patch embedding, LayerNorm, the token mean and the position embedding's sum:
  the epsilon rule, \(n = R / \operatorname{stab}(z)\), \(R_a = a \odot J_a^\top n\),
  feedback \(|\theta| \odot J_\theta^\top n\) (its own function below);
- \(q k^\top\) and \(A v\): lxt's explicit ``matmul_fn`` (epsilon and uniform rule);
- softmax: lxt's explicit ``softmax_fn`` (Taylor decomposition at \(x\));
- residual sums: the epsilon rule, \(R_a = a \odot R / \operatorname{stab}(a + b)\) (lxt's
  explicit ``add2`` stabilises by \(+\varepsilon\) whatever the sign, LFP by
  \(\varepsilon \operatorname{sign}(z)\));
- GELU and the scaling of \(q\) by \(1/\sqrt{d}\): identity, \(R_z = R_y\).

The engine runs the same model through timm's own forward (fused ``scaled_dot_product_attention``
or its explicit path) in one backward pass of \(g = R / x\).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lxt.explicit.functional import matmul_fn, softmax_fn
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward
from lfpoptim.presets import get_preset

TOLERANCE = 1e-5
PRODUCT_EPSILON = 1e-12
"""ε of lxt's explicit matmul stabiliser; the engine's uniform rule has none."""


def stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    return z + epsilon * (z.sign() + (z == 0).to(z.dtype))


class Epsilon(torch.autograd.Function):
    """``fn(a, *params)`` under the epsilon rule, relevance in, relevance (and feedback) out."""

    @staticmethod
    def forward(ctx: Any, fn: Callable[..., torch.Tensor], epsilon: float, a: torch.Tensor, *params: torch.Tensor):
        ctx.fn, ctx.epsilon = fn, epsilon
        ctx.save_for_backward(a, *params)
        return fn(a, *params)

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor):
        a, *params = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [a.detach().requires_grad_(), *(p.detach().requires_grad_() for p in params)]
            z = ctx.fn(*inputs)
            n = relevance / stabilise(z.detach(), ctx.epsilon)
            grads = torch.autograd.grad(z, inputs, n)
        feedback = [p.abs() * g for p, g in zip(params, grads[1:], strict=True)]
        return (None, None, a * grads[0], *feedback)


class Sum(torch.autograd.Function):
    """``a + b`` of two signals under the epsilon rule."""

    @staticmethod
    def forward(ctx: Any, epsilon: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.epsilon = epsilon
        ctx.save_for_backward(a, b)
        return a + b

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor):
        a, b = ctx.saved_tensors
        n = relevance / stabilise(a + b, ctx.epsilon)
        return None, a * n, b * n


class Identity(torch.autograd.Function):
    """``fn(z)`` under the identity rule: the relevance passes unchanged."""

    @staticmethod
    def forward(ctx: Any, fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        return fn(z)

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor):
        return None, relevance


def explicit_forward(model: VisionTransformer, x: torch.Tensor, layer_eps: float, sum_eps: float) -> torch.Tensor:
    """timm's VisionTransformer forward (no class token, average pooling), one relevance rule per operation."""

    def linear(layer: nn.Linear, a: torch.Tensor) -> torch.Tensor:
        return Epsilon.apply(F.linear, layer_eps, a, layer.weight, layer.bias)

    def layer_norm(norm: nn.LayerNorm, a: torch.Tensor) -> torch.Tensor:
        return Epsilon.apply(
            lambda a, w, b: F.layer_norm(a, norm.normalized_shape, w, b, norm.eps), layer_eps, a, norm.weight, norm.bias
        )

    def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return Sum.apply(sum_eps, a, b)

    conv = model.patch_embed.proj
    h = Epsilon.apply(lambda a, w, b: F.conv2d(a, w, b, stride=conv.stride), layer_eps, x, conv.weight, conv.bias)
    h = h.flatten(2).transpose(1, 2)
    h = Epsilon.apply(torch.add, sum_eps, h, model.pos_embed)
    for block in model.blocks:
        attention = block.attn
        batch, tokens, channels = h.shape
        qkv = linear(attention.qkv, layer_norm(block.norm1, h))
        q, k, v = qkv.reshape(batch, tokens, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
        q = Identity.apply(lambda q, scale=attention.scale: q * scale, q)
        scores = matmul_fn.apply(q, k.transpose(-2, -1), False, PRODUCT_EPSILON)
        weights = softmax_fn.apply(scores, -1, None, 1.0, False)
        out = matmul_fn.apply(weights, v, False, PRODUCT_EPSILON)
        out = linear(attention.proj, out.transpose(1, 2).reshape(batch, tokens, channels))
        h = add(h, out)
        mlp = block.mlp
        out = linear(mlp.fc2, Identity.apply(F.gelu, linear(mlp.fc1, layer_norm(block.norm2, h))))
        h = add(h, out)
    pooled = Epsilon.apply(lambda a: a.mean(dim=1), layer_eps, h)
    return linear(model.head, layer_norm(model.fc_norm, pooled))


def tiny_vit(fused: bool, attn_drop_rate: float = 0.0) -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(
        attn_drop_rate=attn_drop_rate,
        img_size=16,
        patch_size=8,
        num_classes=5,
        embed_dim=16,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        class_token=False,
        global_pool="avg",
    )
    with torch.no_grad():  # timm's init is tiny (std 0.02) and zero biases: make every rule matter
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.normal_(1.0, 0.3)
            else:
                param.normal_(0.0, 0.5)
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model.double().eval()


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("fused", [True, False], ids=["fused_sdpa", "explicit_attention"])
@pytest.mark.parametrize("preset", ["vit", "default"])
def test_vit_feedback_matches_explicit_attnlrp(fused: bool, preset: str) -> None:
    model = tiny_vit(fused)
    inputs = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3])
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), preset=preset, feedback_reduction="sum", strict=True, lr=0.1)
    feedback = optimizer.feedback(inputs, targets)

    layer_eps = get_preset(preset).epsilon
    sum_eps = min(layer_eps, 1e-8) if preset == "vit" else layer_eps
    model.zero_grad()
    outputs = explicit_forward(model, inputs, layer_eps, sum_eps)
    outputs.backward(SoftmaxLossReward()(outputs.detach(), targets))

    assert set(feedback) == {name for name, _ in model.named_parameters()}
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert relative_error(feedback[name], param.grad) <= TOLERANCE, name


def test_fused_and_explicit_attention_give_the_same_feedback() -> None:
    inputs = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([4, 3, 2, 1])
    feedback = [
        LFPOptimizer(tiny_vit(fused), SoftmaxLossReward(), preset="vit", lr=0.1).feedback(inputs, targets)
        for fused in (True, False)
    ]
    for name in feedback[0]:
        torch.testing.assert_close(feedback[0][name], feedback[1][name], rtol=1e-9, atol=1e-12)


def test_attention_dropout_scales_kept_reward_in_the_fused_rule_as_in_timms_explicit_path() -> None:
    """Train mode, attention dropout 0.5, ``dropout="reference"``: kept weights' reward times 2 on both paths.

    timm's explicit path applies ``nn.Dropout`` (`DropoutRule`) to the attention weights; the fused
    call hands ``dropout_p`` to ``F.scaled_dot_product_attention``, which the rule then runs
    explicitly with the same scaling. From the same random state both draw the same masks.
    """
    inputs = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([4, 3, 2, 1])
    feedback = []
    for fused in (True, False):
        model = tiny_vit(fused, attn_drop_rate=0.5).train()
        torch.manual_seed(7)
        feedback.append(LFPOptimizer(model, SoftmaxLossReward(), preset="vit", lr=0.1).feedback(inputs, targets))
    without_dropout = LFPOptimizer(tiny_vit(True), SoftmaxLossReward(), preset="vit", lr=0.1).feedback(inputs, targets)
    qkv = "blocks.0.attn.qkv.weight"
    assert not torch.allclose(feedback[0][qkv], without_dropout[qkv])  # the masks did act
    for name in feedback[0]:
        torch.testing.assert_close(feedback[0][name], feedback[1][name], rtol=1e-9, atol=1e-12)


class TwoBranches(nn.Module):
    """``head(combine(left(x), right(x)))``, for checking how a combining operation splits reward."""

    def __init__(self, combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.left, self.right, self.head = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(4, 3)
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.combine(self.left(x), self.right(x)))


def branch_rewards(
    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], preset: str = "vit"
) -> tuple[torch.Tensor, ...]:
    """The reward arriving at the two branches' outputs and at the combination's output, per unit.

    ``vit`` is AttnLRP (the uniform rule for every product of two signals); ``default`` hands both
    factors of an element-wise product the whole reward.
    """
    torch.manual_seed(1)
    model = TwoBranches(combine).double()
    inputs = torch.randn(5, 6, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 0, 1])
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            values = output.detach()
            output.register_hook(lambda grad: seen.__setitem__(name, grad * values))

        return hook

    model.left.register_forward_hook(keep("left"))
    model.right.register_forward_hook(keep("right"))

    def keep_input(module: nn.Module, args: tuple[torch.Tensor]) -> None:
        values = args[0].detach()
        args[0].register_hook(lambda grad: seen.__setitem__("out", grad * values))

    model.head.register_forward_pre_hook(keep_input)
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), preset=preset, epsilon=1e-12, feedback_reduction="sum", lr=0.1)
    optimizer.feedback(inputs, targets)
    return seen["left"], seen["right"], seen["out"]


def test_product_of_two_signals_splits_reward_evenly() -> None:
    left, right, out = branch_rewards(torch.mul)
    torch.testing.assert_close(left, out / 2)
    torch.testing.assert_close(right, out / 2)


def test_default_preset_hands_both_factors_of_a_product_the_whole_reward() -> None:
    left, right, out = branch_rewards(torch.mul, preset="default")
    torch.testing.assert_close(left, out)
    torch.testing.assert_close(right, out)
    left, right, out = branch_rewards(lambda a, b: (a.unsqueeze(2) @ b.unsqueeze(1)).sum(dim=2), preset="default")
    torch.testing.assert_close(left.sum(dim=1), out.sum(dim=1) / 2)  # matrix products stay uniform


def test_matmul_of_two_signals_splits_reward_evenly() -> None:
    left, right, out = branch_rewards(lambda a, b: (a.unsqueeze(2) @ b.unsqueeze(1)).sum(dim=2))
    torch.testing.assert_close(left.sum(dim=1), out.sum(dim=1) / 2)
    torch.testing.assert_close(right.sum(dim=1), out.sum(dim=1) / 2)


def test_division_of_two_signals_splits_reward_evenly() -> None:
    """``a / b``: the reference's ``div2``; plain gradients would hand ``b`` minus the whole reward."""
    left, right, out = branch_rewards(torch.div)
    torch.testing.assert_close(left, out / 2)
    torch.testing.assert_close(right, out / 2)


def test_sigmoid_gate_keeps_the_share_of_its_resting_value() -> None:
    r"""\(y = a \odot \sigma(s)\): \(R_a = R/2\); \(s\) gets \((\sigma(s) - \frac12) / \sigma(s)\) of the other half."""
    seen: dict[str, torch.Tensor] = {}

    def gated(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(s)
        seen["gate"] = gate.detach()
        return a * gate

    left, right, out = branch_rewards(gated)
    gate = seen["gate"]
    torch.testing.assert_close(left, out / 2)
    torch.testing.assert_close(right, out / 2 * (gate - 0.5) / gate)
    left, right, out = branch_rewards(gated, preset="default")  # both factors the whole reward
    torch.testing.assert_close(left, out)
    torch.testing.assert_close(right, out * (seen["gate"] - 0.5) / seen["gate"])


def test_layer_scale_is_a_layer_not_a_product() -> None:
    """``x * gamma``: the epsilon rule (reward conserved to ``x``, feedback to ``gamma``)."""
    torch.manual_seed(2)
    gamma = nn.Parameter(torch.rand(4, dtype=torch.float64) + 0.5)
    model = TwoBranches(lambda a, b: (a + b) * gamma.reshape(1, -1)).double()
    model.gamma = gamma
    inputs = torch.randn(5, 6, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 0, 1])
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), epsilon=1e-12, feedback_reduction="sum", lr=0.1)
    feedback = optimizer.feedback(inputs, targets)
    # as epsilon -> 0 with a piecewise-linear network, LFP is the weight-scaled gradient
    model.zero_grad()
    F.cross_entropy(model(inputs), targets, reduction="sum").backward()
    torch.testing.assert_close(feedback["gamma"], -gamma.detach().abs() * gamma.grad)
