"""``lfpoptim.explain`` and the ``lfpoptim explain`` command: the rule table, and a model left as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from digits import conv_stem
from torch import nn

from lfpoptim import explain
from lfpoptim.cli import main
from lfpoptim.explain import GRADIENT_RULE, UNCOVERED


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*conv_stem(), nn.Dropout(0.5), nn.Linear(64, 10))


class Exp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.exp()


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(channels, 2)
        self.expand = nn.Linear(2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(x))))


def uncovered_model() -> nn.Module:
    """For the command line: ``test_explain:uncovered_model``."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), Exp(), nn.Linear(8, 3))


def test_table_lists_each_operation_with_its_module_and_rule() -> None:
    explanation = explain(small_cnn().train(), torch.randn(2, 1, 8, 8))
    rows = [(r.module, r.module_type, r.operation, r.rule) for r in explanation.operations]
    assert rows == [
        ("0", "Conv2d", "conv2d", "epsilon(ε=1e-06)"),
        ("1", "BatchNorm2d", "batch_norm", "epsilon(ε=1e-06)"),
        ("2", "ReLU", "relu", "identity"),
        ("3", "MaxPool2d", "max_pool2d", GRADIENT_RULE),
        ("4", "Flatten", "Tensor.flatten", GRADIENT_RULE),
        ("5", "Dropout", "dropout", "dropout (reference)"),
        ("6", "Linear", "linear", "epsilon(ε=1e-06)"),
    ]
    assert explanation.preset == "default"
    assert explanation.uncovered == []
    assert explanation.rule_counts() == {"epsilon": 3, "gradient": 2, "identity": 1, "dropout (reference)": 1}
    assert str(explanation).endswith("uncovered operations: none")


def test_uncovered_operation_is_reported_with_its_module() -> None:
    explanation = explain(uncovered_model(), torch.randn(2, 6))
    assert [(r.module, r.operation, r.rule) for r in explanation.uncovered] == [("1", "Tensor.exp", UNCOVERED)]
    assert "uncovered operations: Tensor.exp in 1" in str(explanation)


def test_preset_and_epsilon_are_shown() -> None:
    explanation = explain(small_cnn(), torch.randn(2, 1, 8, 8), "vit", epsilon=0.5)
    assert explanation.preset == "vit"
    assert explanation.operations[0].rule == "epsilon(ε=0.5)"
    assert "under preset 'vit', ε = 0.5" in str(explanation)


def test_gate_and_attention_rules_are_named() -> None:
    model = nn.Sequential(nn.Linear(4, 4), SqueezeExcite(4))
    rules = {r.operation: r.rule for r in explain(model, torch.randn(3, 4)).operations}
    assert rules["Tensor.mul"] == "gradient (two signals), a gate"  # the default preset
    assert rules["sigmoid"] == "identity (from φ(0) in a gate)"
    assert rules["relu"] == "identity"


class FoldPatches(nn.Module):
    """VOLO's sum of overlapping patches: ``F.fold`` of 2x2 patches at stride 1 onto 3x3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.fold(x.reshape(-1, 4, 4), output_size=(3, 3), kernel_size=2).flatten(1)


def test_fold_sums_patches_under_the_epsilon_rule() -> None:
    model = nn.Sequential(nn.Linear(4, 16), FoldPatches(), nn.Linear(9, 3))
    rules = {r.operation: r.rule for r in explain(model, torch.randn(2, 4), preset="vit").operations}
    assert rules["fold"] == "epsilon(ε=1e-08)"  # a sum of signals, like the residual sums


def test_model_is_left_exactly_as_it_was() -> None:
    model = small_cnn().train()
    inputs = torch.randn(2, 1, 8, 8)
    buffers = [buffer.clone() for buffer in model.buffers()]
    rng_state = torch.get_rng_state()
    explain(model, inputs)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the dropout mask came from a forked generator
    for old, new in zip(buffers, model.buffers(), strict=True):
        assert torch.equal(old, new)
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
    assert all(param.grad is None for param in model.parameters())
    assert torch.overrides._get_current_function_mode_stack() == []


def test_command_explains_timm_resnet18(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "timm:resnet18"]) == 0
    table = capsys.readouterr().out
    assert "resnet18 (ResNet) under preset 'resnet'" in table
    assert "layer1.0  " in table
    assert "Tensor.add_" in table
    assert table.rstrip().endswith("uncovered operations: none")


def test_command_explains_timm_vit_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "timm:vit_tiny_patch16_224"]) == 0
    table = capsys.readouterr().out
    assert "under preset 'vit', ε = 1:" in table
    assert "blocks.11.attn" in table
    assert "scaled_dot_product_attention" in table
    assert "attention (AttnLRP)" in table
    assert table.rstrip().endswith("uncovered operations: none")


def test_command_strict_fails_on_uncovered_operations(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "test_explain:uncovered_model", "--input-size", "6", "--strict"]) == 1
    assert "uncovered operations: Tensor.exp in 1" in capsys.readouterr().out


def test_command_reports_bad_model_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "resnet18"]) == 2
    assert "timm:<architecture>" in capsys.readouterr().err
    assert main(["explain", "test_explain:uncovered_model"]) == 2
    assert "--input-size" in capsys.readouterr().err


def test_command_lists_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "v*"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("vit ")
    assert "ε=1 " in out
