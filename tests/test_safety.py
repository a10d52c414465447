"""A failing step leaves the model, its gradients and the optimizer exactly as they were."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward


class Residual(nn.Module):
    """conv-bn-relu-conv-bn, plus the input, then an in-place ReLU: the timm BasicBlock shape."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        x += shortcut
        return self.act2(x)


class FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("injected backward fault")


class BackwardFault(nn.Module):
    armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FailingBackward.apply(x) if self.armed else x


def make_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        Residual(4),
        BackwardFault(),
        nn.MaxPool2d(2),
        nn.Dropout(0.1),
        nn.Flatten(),
        nn.Linear(64, 3),
    )


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "modules": [(name, id(module)) for name, module in model.named_modules()],
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "grads": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "buffers": {name: b.clone() for name, b in model.named_buffers()},
        "inplace": {name: m.inplace for name, m in model.named_modules() if hasattr(m, "inplace")},
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
            for m in model.modules()
        ),
        "optimizer": copy.deepcopy(opt.state_dict()),
        "modes": torch._C._len_torch_function_stack(),
    }


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["modules"] == before["modules"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["inplace"] == before["inplace"]
    assert after["hooks"] == before["hooks"] == 0
    assert after["modes"] == before["modes"] == 0
    for key in ("params", "buffers"):
        for name, tensor in before[key].items():
            assert torch.equal(after[key][name], tensor), f"{key} {name} changed"
    for name, grad in before["grads"].items():
        assert (grad is None and after["grads"][name] is None) or torch.equal(after["grads"][name], grad)
    torch.testing.assert_close(after["optimizer"], before["optimizer"], rtol=0, atol=0)


@pytest.fixture
def trained() -> tuple[nn.Module, LFPOptimizer]:
    model = make_cnn()
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9)
    opt.step(*make_batch())  # momentum buffers and running statistics are non-trivial now
    return model, opt


def test_fault_in_the_forward_of_any_module_changes_nothing(trained):
    model, opt = trained
    modules = [(name, m) for name, m in model.named_modules() if name]
    for name, module in modules:
        before = snapshot(model, opt)

        def fail(module: nn.Module, args: Any, name: str = name) -> None:
            raise RuntimeError(f"injected fault in {name}")

        handle = module.register_forward_pre_hook(fail)
        with pytest.raises(RuntimeError, match=f"injected fault in {name}"):
            opt.step(*make_batch())
        handle.remove()
        assert_unchanged(before, snapshot(model, opt))
    assert len(modules) >= 12
    opt.step(*make_batch())


def test_fault_in_the_reward_changes_nothing(trained):
    model, opt = trained
    before = snapshot(model, opt)

    def failing_reward(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("injected reward fault")

    opt.reward_fn = failing_reward
    with pytest.raises(RuntimeError, match="injected reward fault"):
        opt.step(*make_batch())
    assert_unchanged(before, snapshot(model, opt))


def test_fault_in_the_backward_changes_nothing(trained):
    model, opt = trained
    fault = next(m for m in model.modules() if isinstance(m, BackwardFault))
    before = snapshot(model, opt)
    fault.armed = True
    with pytest.raises(RuntimeError, match="injected backward fault"):
        opt.step(*make_batch())
    fault.armed = False
    assert_unchanged(before, snapshot(model, opt))
    opt.step(*make_batch())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_reward_raises_and_changes_nothing(trained, bad):
    model, opt = trained
    before = snapshot(model, opt)

    def broken_reward(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        reward = SoftmaxLossReward()(outputs, targets)
        reward[0, 0] = bad
        return reward

    opt.reward_fn = broken_reward
    with pytest.raises(ValueError, match=r"reward contains NaN or Inf \(1 of 18 entries\)"):
        opt.step(*make_batch())
    assert_unchanged(before, snapshot(model, opt))


def test_reward_of_the_wrong_shape_is_named(trained):
    model, opt = trained
    before = snapshot(model, opt)
    opt.reward_fn = lambda outputs, targets: outputs[:, :2]
    with pytest.raises(ValueError, match=r"reward has shape \(6, 2\) but outputs have shape \(6, 3\)"):
        opt.step(*make_batch())
    assert_unchanged(before, snapshot(model, opt))


def test_bad_targets_raise_before_anything_changes(trained):
    model, opt = trained
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="target class index 3 is out of range"):
        opt.step(torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert_unchanged(before, snapshot(model, opt))


def test_a_successful_step_leaves_no_hook_and_no_attribute(trained):
    model, opt = trained
    before = snapshot(model, opt)
    opt.step(*make_batch())
    after = snapshot(model, opt)
    assert after["hooks"] == 0
    assert after["modes"] == 0
    assert after["inplace"] == before["inplace"]
    assert after["modules"] == before["modules"]
    assert all(not hasattr(p, "feedback") for p in model.parameters())


def test_model_returning_a_tuple_is_refused():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.linear(x), x

    opt = LFPOptimizer(TwoHeads(), SoftmaxLossReward(), lr=0.1)
    with pytest.raises(TypeError, match="the model returned tuple; LFP needs a single output tensor"):
        opt.step(torch.randn(2, 4), torch.tensor([0, 1]))
