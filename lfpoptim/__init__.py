"""lfpoptim: train neural networks with Layer-wise Feedback Propagation behind a torch.optim API."""

from . import analysis, presets, prune, rewards, rewards_feedback, rewards_regression, rules
from .analysis import ZeroParameterWarning
from .dropin import DropInLFPOptimizer
from .engine import LFPPass, lfp_pass
from .explain import Explanation, explain
from .modules import Heaviside, heaviside
from .optimizer import LFPOptimizer, LFPStepResult
from .presets import Preset, get_preset, list_presets, register_preset
from .rewards import (
    BinarySigmoidLossReward,
    BoundedSoftmaxReward,
    CorrectClassificationReward,
    MaximizeSingleNeuron,
    MinimizeSingleNeuron,
    MisclassificationReward,
    SigmoidLossReward,
    SoftmaxLossReward,
)
from .rewards_feedback import PreferenceReward, RatingReward, ScoreReward
from .rewards_regression import AbsoluteErrorReward, HuberReward, SquaredErrorReward
from .rules import UncoveredOperationError, UncoveredOperationWarning

__version__ = "0.2.0"

__all__ = [
    "AbsoluteErrorReward",
    "BinarySigmoidLossReward",
    "BoundedSoftmaxReward",
    "CorrectClassificationReward",
    "DropInLFPOptimizer",
    "Explanation",
    "Heaviside",
    "HuberReward",
    "LFPOptimizer",
    "LFPPass",
    "LFPStepResult",
    "MaximizeSingleNeuron",
    "MinimizeSingleNeuron",
    "MisclassificationReward",
    "PreferenceReward",
    "Preset",
    "RatingReward",
    "ScoreReward",
    "SigmoidLossReward",
    "SoftmaxLossReward",
    "SquaredErrorReward",
    "UncoveredOperationError",
    "UncoveredOperationWarning",
    "ZeroParameterWarning",
    "__version__",
    "analysis",
    "explain",
    "get_preset",
    "heaviside",
    "lfp_pass",
    "list_presets",
    "presets",
    "prune",
    "register_preset",
    "rewards",
    "rewards_feedback",
    "rewards_regression",
    "rules",
]
