"""lfpoptim: train neural networks with Layer-wise Feedback Propagation behind a torch.optim API."""

from . import analysis, prune, rewards, rules
from .analysis import ZeroParameterWarning
from .dropin import DropInLFPOptimizer
from .engine import LFPPass, lfp_pass
from .modules import Heaviside, heaviside
from .optimizer import LFPOptimizer, LFPStepResult
from .rewards import (
    BinarySigmoidLossReward,
    BoundedSoftmaxReward,
    CorrectClassificationReward,
    MaximizeSingleNeuron,
    MinimizeSingleNeuron,
    MisclassificationReward,
    ScoreReward,
    SigmoidLossReward,
    SoftmaxLossReward,
)

__version__ = "0.1.0"

__all__ = [
    "BinarySigmoidLossReward",
    "BoundedSoftmaxReward",
    "CorrectClassificationReward",
    "DropInLFPOptimizer",
    "Heaviside",
    "LFPOptimizer",
    "LFPPass",
    "LFPStepResult",
    "MaximizeSingleNeuron",
    "MinimizeSingleNeuron",
    "MisclassificationReward",
    "ScoreReward",
    "SigmoidLossReward",
    "SoftmaxLossReward",
    "ZeroParameterWarning",
    "__version__",
    "analysis",
    "heaviside",
    "lfp_pass",
    "prune",
    "rewards",
    "rules",
]
