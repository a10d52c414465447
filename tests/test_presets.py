"""Presets: the registry, plugins through entry points, ``preset="auto"``, and the strict coverage check."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfpoptim import (
    DropInLFPOptimizer,
    LFPOptimizer,
    SoftmaxLossReward,
    UncoveredOperationError,
    UncoveredOperationWarning,
)
from lfpoptim.presets import (
    UnknownPresetError,
    get_preset,
    list_presets,
    register_preset,
    registry,
    select_preset,
)
from lfpoptim.rules import EpsilonRule, default_rules

BUILT_IN = {"default", "resnet", "vit", "regression"}

# the BatchNorm bias of uncovered_model starts at zero, which the optimizers point out
pytestmark = pytest.mark.filterwarnings("ignore::lfpoptim.ZeroParameterWarning")


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Presets registered by a test disappear with it; entry points are read afresh."""
    monkeypatch.setattr(registry, "_PRESETS", dict(registry._PRESETS))
    monkeypatch.setattr(registry, "_entry_points", None)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


class Exp(nn.Module):
    """``exp``: an operation no preset has a rule for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


def uncovered_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), Exp(), nn.Linear(8, 3))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(8, 6, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def test_built_in_presets_are_listed_and_filtered_by_pattern() -> None:
    assert set(list_presets()) >= BUILT_IN
    assert list_presets("re*") == ["regression", "resnet"]
    assert list_presets() == sorted(list_presets())


def test_unknown_preset_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownPresetError) as raised:
        LFPOptimizer(mlp(), SoftmaxLossReward(), preset="resnet51", lr=0.1)
    for name in BUILT_IN:
        assert repr(name) in str(raised.value) or name in str(raised.value)
    assert "resnet51" in str(raised.value)


class TimmLike(nn.Module):
    """A model that says which timm architecture it is, as timm models do."""

    def __init__(self, architecture: str) -> None:
        super().__init__()
        self.pretrained_cfg = {"architecture": architecture}
        self.body = mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ToyAttention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.softmax(dim=-1) * x


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (TimmLike("resnet50"), "resnet"),
        (TimmLike("vgg11_bn"), "resnet"),
        (TimmLike("vit_small_patch16_224"), "vit"),
        (TimmLike("swin_tiny_patch4_window7_224"), "vit"),
        (TimmLike("efficientnet_b0"), "default"),
        (nn.Sequential(nn.Linear(4, 4), ToyAttention()), "vit"),
        (mlp(), "default"),
    ],
    ids=["resnet50", "vgg11_bn", "vit", "swin", "efficientnet", "attention_module", "mlp"],
)
def test_auto_chooses_by_architecture_then_module_classes(model: nn.Module, expected: str) -> None:
    assert select_preset(model).name == expected


def test_explicit_name_and_epsilon_override_the_choice() -> None:
    model = TimmLike("vit_tiny_patch16_224")
    assert LFPOptimizer(model, SoftmaxLossReward(), lr=0.1).epsilon == 1.0  # the vit preset's own
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), preset="default", epsilon=1e-3, lr=0.1)
    assert optimizer.preset is not None
    assert optimizer.preset.name == "default"
    assert optimizer.rules[F.linear] == EpsilonRule(1e-3)


def test_rules_and_preset_together_are_refused() -> None:
    with pytest.raises(ValueError, match="either rules"):
        LFPOptimizer(mlp(), SoftmaxLossReward(), rules=default_rules(), preset="vit", lr=0.1)


@pytest.mark.usefixtures("isolated_registry")
def test_registered_preset_is_found_and_chosen_by_module_type() -> None:
    class Sine(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x)

    @register_preset("sine_test", epsilon=1e-4, module_types=("Sine",), priority=5)
    def sine_test(epsilon: float, dropout: str) -> dict:
        """Default rules, for models with Sine modules."""
        return default_rules(epsilon, dropout)

    preset = get_preset("sine_test")
    assert preset.description == "Default rules, for models with Sine modules."
    assert preset.epsilon == 1e-4
    assert select_preset(nn.Sequential(nn.Linear(2, 2), Sine())) is preset
    with pytest.raises(ValueError, match="already registered"):
        register_preset("sine_test")(lambda epsilon, dropout: {})
    with pytest.raises(ValueError, match="cannot be called 'auto'"):
        register_preset("auto")


def write_distribution(root: Path, package: str, entry_points: str, source: str) -> None:
    """A throwaway installed distribution: a package and its ``.dist-info`` with entry points."""
    (root / package).mkdir()
    (root / package / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.mark.usefixtures("isolated_registry")
def test_preset_of_an_installed_distribution_is_found_by_name(tmp_path: Path, monkeypatch) -> None:
    write_distribution(
        tmp_path,
        "lfp_demo_presets",
        """
        [lfpoptim.presets]
        demo = lfp_demo_presets:demo
        """,
        '''
        from lfpoptim.rules import default_rules

        def demo(epsilon=1e-3, dropout="reference"):
            """A preset shipped by another distribution."""
            return default_rules(epsilon, dropout)
        ''',
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "demo" in list_presets()
        assert "lfp_demo_presets" not in sys.modules  # listed by its entry point, not imported yet
        preset = get_preset("demo")
        assert "lfp_demo_presets" in sys.modules
        assert preset.description == "A preset shipped by another distribution."
        optimizer = LFPOptimizer(mlp(), SoftmaxLossReward(), preset="demo", epsilon=0.5, lr=0.1)
        assert optimizer.preset is preset
        assert optimizer.rules[F.linear] == EpsilonRule(0.5)
        with pytest.raises(UnknownPresetError, match="demo"):  # the error lists plugin presets too
            get_preset("no_such_preset")
    finally:
        sys.modules.pop("lfp_demo_presets", None)


@pytest.mark.usefixtures("isolated_registry")
def test_entry_point_that_registers_nothing_is_an_error(tmp_path: Path, monkeypatch) -> None:
    write_distribution(
        tmp_path,
        "lfp_broken_presets",
        """
        [lfpoptim.presets]
        broken = lfp_broken_presets
        """,
        "VALUE = 1\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ValueError, match="did not register a preset named 'broken'"):
            get_preset("broken")
    finally:
        sys.modules.pop("lfp_broken_presets", None)


def parameters_and_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [tensor.detach().clone() for tensor in (*model.parameters(), *model.buffers())]


def test_strict_optimizer_raises_listing_uncovered_operations_and_changes_nothing() -> None:
    model = uncovered_model()
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), strict=True, lr=0.1, momentum=0.9)
    before = parameters_and_buffers(model)
    with pytest.raises(UncoveredOperationError, match=r"1 operation\(s\).*preset 'default'.*: exp") as raised:
        optimizer.step(*batch())
    assert "No parameter was updated" in str(raised.value)
    assert "strict=False" in str(raised.value)
    for old, new in zip(before, parameters_and_buffers(model), strict=True):
        assert torch.equal(old, new)
    assert all(param.grad is None for param in model.parameters())
    assert not optimizer.state


def test_non_strict_optimizer_warns_once_and_trains() -> None:
    model = uncovered_model()
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1)
    with pytest.warns(UncoveredOperationWarning, match="exp") as caught:
        optimizer.step(*batch())
    message = str(caught[0].message)
    assert "Training goes on that way; this warning is shown once" in message
    assert "strict=True makes this an error" in message
    assert "strict=False" not in message  # the optimizer is non-strict already
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncoveredOperationWarning)
        optimizer.step(*batch())


def test_covered_model_trains_under_strict() -> None:
    model = mlp()
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), strict=True, lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncoveredOperationWarning)
        for _ in range(3):
            optimizer.step(*batch())


def test_dropin_strict_backward_raises_and_non_strict_warns_once() -> None:
    inputs, targets = batch()
    with (
        DropInLFPOptimizer(uncovered_model(), strict=True, lr=0.1) as optimizer,
        pytest.raises(UncoveredOperationError, match="exp"),
    ):
        F.cross_entropy(optimizer.model(inputs), targets).backward()
    with DropInLFPOptimizer(uncovered_model(), lr=0.1) as optimizer:
        with pytest.warns(UncoveredOperationWarning, match="exp"):
            F.cross_entropy(optimizer.model(inputs), targets).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("error", UncoveredOperationWarning)
            optimizer.zero_grad()
            F.cross_entropy(optimizer.model(inputs), targets).backward()
            optimizer.step()
