"""The ``resnet`` preset: residual and plain CNNs of convolutions, BatchNorm, ReLU, pooling and sums."""

from __future__ import annotations

from ..rules import DropoutMode, RuleMap
from .default import default
from .registry import register_preset

RESNET_ARCHITECTURES = (
    "resnet*",
    "resnext*",
    "seresnet*",
    "seresnext*",
    "ecaresnet*",
    "skresnet*",
    "wide_resnet*",
    "resnetrs*",
    "resnetv2*",
    "resnetblur*",
    "regnet*",
    "repvgg*",
    "vgg*",
    "densenet*",
    "dla*",
    "dpn*",
)
"""timm architecture name patterns that ``preset="auto"`` maps to ``resnet``."""


@register_preset("resnet", epsilon=1e-6, architectures=RESNET_ARCHITECTURES)
def resnet(epsilon: float = 1e-6, dropout: DropoutMode = "reference") -> RuleMap:
    r"""The reference's ResNet rules: epsilon on convolutions, BatchNorm, pooling and residual sums.

    The reference implementation needs a hand-written ``Sum`` module for residual connections;
    here the epsilon rule sees every ``+`` (timm's in-place ``x += shortcut`` included), so the
    rules are those of ``default``. In eval mode and as ε → 0 the feedback of these networks is
    exactly the weight-scaled gradient \(-|\theta| \odot \partial L / \partial \theta\) of the
    summed cross-entropy (with `lfpoptim.rewards.SoftmaxLossReward`), which the timm coverage
    tests check.

    Args:
        epsilon: ε of the epsilon rules.
        dropout: how train-mode dropout treats reward.

    Returns:
        the rule map.
    """
    return default(epsilon, dropout)
