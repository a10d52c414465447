"""LFPOptimizer behaves like a torch.optim.Optimizer wherever a training loop would notice."""

from __future__ import annotations

import functools
import io

import pytest
import torch
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 8), torch.randint(0, 4, (n,))


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_is_an_optimizer_sharing_groups_and_state_with_its_base():
    opt = LFPOptimizer(make_mlp(), SoftmaxLossReward(), lr=0.1, momentum=0.9)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.base.param_groups
    assert opt.state is opt.base.state


def test_step_sets_grad_to_minus_feedback_and_steps_the_base():
    model = make_mlp()
    x, y = batch()
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.5)
    feedback = opt.feedback(x, y)
    before = params_of(model)
    result = opt.step(x, y)
    for (name, param), old in zip(model.named_parameters(), before, strict=True):
        torch.testing.assert_close(param.grad, -feedback[name])
        torch.testing.assert_close(param.detach(), old + 0.5 * feedback[name])
    assert result.outputs.shape == (32, 4)
    assert result.reward.shape == (32, 4)
    assert result.mean_reward == pytest.approx(float(result.reward.mean()))


def test_parameter_that_no_reward_reaches_gets_a_zero_gradient():
    class WithUnusedLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(8, 4)
            self.unused = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    model = WithUnusedLayer()
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1)
    opt.step(*batch())
    assert torch.equal(model.unused.weight.grad, torch.zeros(4, 8))
    assert model.used.weight.grad.abs().sum() > 0


def test_lr_scheduler_drives_the_base_learning_rate():
    opt = LFPOptimizer(make_mlp(), SoftmaxLossReward(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = batch()
    for _ in range(3):
        opt.step(x, y)
        scheduler.step()
    assert opt.base.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert scheduler.get_last_lr() == [pytest.approx(0.0125)]


def run(model: nn.Module, opt: LFPOptimizer, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    return [opt.step(x, y).mean_reward for x, y in batches]


def test_checkpoint_resumes_bit_identically():
    batches = [batch() for _ in range(6)]
    model = make_mlp()
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    first = run(model, opt, batches[:3])
    scheduler.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": scheduler.state_dict()}, buffer)
    uninterrupted = run(model, opt, batches[3:])

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed_model = make_mlp()
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_opt = LFPOptimizer(resumed_model, SoftmaxLossReward(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    resumed_scheduler = torch.optim.lr_scheduler.ExponentialLR(resumed_opt, gamma=0.9)
    resumed_opt.load_state_dict(checkpoint["opt"])
    resumed_scheduler.load_state_dict(checkpoint["sched"])
    assert resumed_opt.param_groups[0]["lr"] == pytest.approx(0.09)
    resumed = run(resumed_model, resumed_opt, batches[3:])

    assert len(first) == 3
    assert resumed == uninterrupted
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_state_dict_is_the_base_format_both_ways():
    model = make_mlp()
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9)
    opt.step(*batch())
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sgd.load_state_dict(opt.state_dict())
    assert len(sgd.state) == 6
    opt2 = LFPOptimizer(model, SoftmaxLossReward(), lr=0.3, momentum=0.9)
    opt2.load_state_dict(sgd.state_dict())
    assert opt2.param_groups[0]["lr"] == 0.1
    assert opt2.state is opt2.base.state
    assert opt2.param_groups is opt2.base.param_groups
    momentum = opt2.state[next(iter(model.parameters()))]["momentum_buffer"]
    assert momentum.abs().sum() > 0


def test_zero_grad_clears_gradients():
    model = make_mlp()
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1)
    opt.step(*batch())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_add_param_group_reaches_the_base():
    model = make_mlp()
    extra = nn.Linear(2, 2)
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1)
    opt.add_param_group({"params": extra.parameters(), "lr": 0.01})
    assert len(opt.base.param_groups) == 2
    assert opt.param_groups[1]["lr"] == 0.01
    opt.step(*batch())
    assert torch.equal(extra.weight.grad, torch.zeros(2, 2))


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        (torch.optim.Adam, "Adam"),
        (functools.partial(torch.optim.SGD, nesterov=True, momentum=0.9), "SGD"),
        ("adamw", "AdamW"),
        ("lamb", "Lamb"),
    ],
)
def test_base_may_be_a_class_a_partial_or_a_timm_name(base, expected):
    model = make_mlp()
    opt = LFPOptimizer(model, SoftmaxLossReward(), base=base, lr=1e-2)
    assert type(opt.base).__name__ == expected
    before = params_of(model)
    opt.step(*batch())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_step_hooks_of_torch_optim_run():
    opt = LFPOptimizer(make_mlp(), SoftmaxLossReward(), lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda optimizer, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda optimizer, args, kwargs: calls.append("post"))
    opt.step(*batch())
    assert calls == ["pre", "post"]


def test_mean_reduction_does_not_depend_on_batch_size_and_sum_does():
    model = make_mlp()
    x, y = batch(16)
    doubled = (torch.cat([x, x]), torch.cat([y, y]))
    for reduction, factor in [("mean", 1.0), ("normalized", 1.0), ("grad_norm", 1.0), ("sum", 2.0)]:
        opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, feedback_reduction=reduction)
        single, double = opt.feedback(x, y), opt.feedback(*doubled)
        for name in single:
            torch.testing.assert_close(double[name], factor * single[name])


def test_normalized_feedback_is_mean_feedback_over_mean_weight_magnitude():
    model = make_mlp()
    x, y = batch()
    mean = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, feedback_reduction="mean").feedback(x, y)
    normalized = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, feedback_reduction="normalized").feedback(x, y)
    for name, param in model.named_parameters():
        torch.testing.assert_close(normalized[name], mean[name] / param.detach().abs().mean())


def test_default_feedback_has_the_norm_of_the_unweighted_factor_in_every_tensor():
    # grad_norm: F * ||J^T n|| / || |theta| * J^T n ||, with J^T n = F_mean / |theta|; for this ReLU
    # net and the softmax reward J^T n is minus the mean cross-entropy's gradient
    model = make_mlp()
    x, y = batch()
    mean = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, feedback_reduction="mean").feedback(x, y)
    scaled = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1).feedback(x, y)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for name, param in model.named_parameters():
        factor_norm = torch.linalg.vector_norm(mean[name] / param.detach().abs())
        torch.testing.assert_close(scaled[name], mean[name] * factor_norm / torch.linalg.vector_norm(mean[name]))
        # the same length as SGD's step (up to the stabiliser's O(eps) difference)
        gradient_norm = torch.linalg.vector_norm(param.grad)
        torch.testing.assert_close(torch.linalg.vector_norm(scaled[name]), gradient_norm, rtol=1e-3, atol=0.0)


def test_clip_norm_bounds_the_update():
    model = make_mlp()
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, feedback_reduction="sum", clip_norm=1e-3)
    opt.step(*batch())
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert float(norm) == pytest.approx(1e-3, rel=1e-4)


def test_frozen_parameters_are_left_alone():
    model = make_mlp()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1)
    opt.step(*batch())
    assert torch.equal(model[0].weight, frozen)
    assert model[0].weight.grad is None
    assert "0.weight" not in opt.feedback(*batch())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"feedback_reduction": "avg"}, ValueError, "feedback_reduction must be one of"),
        ({"clip_norm": -1.0}, ValueError, "clip_norm must be positive"),
        ({"epsilon": -0.1}, ValueError, "epsilon must be non-negative"),
        ({"dropout": "off"}, ValueError, "dropout must be 'reference' or 'conservative'"),
        ({"base": 3}, TypeError, "base must be an optimizer class"),
    ],
)
def test_bad_settings_are_rejected_with_a_clear_message(kwargs, error, message):
    with pytest.raises(error, match=message):
        LFPOptimizer(make_mlp(), SoftmaxLossReward(), lr=0.1, **kwargs)


def test_model_and_reward_are_checked():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        LFPOptimizer(lambda x: x, SoftmaxLossReward(), lr=0.1)
    with pytest.raises(TypeError, match="reward_fn must be callable"):
        LFPOptimizer(make_mlp(), "softmax", lr=0.1)
