"""Models learn digits under LFP, including one that gradient descent cannot train at all."""

from __future__ import annotations

import copy

import pytest
import torch
from digits import accuracy, digits
from torch import nn

from lfpoptim import Heaviside, LFPOptimizer, SoftmaxLossReward


def train(model: nn.Module, opt: LFPOptimizer, epochs: int, shape: tuple[int, ...] = (64,), batch: int = 64) -> float:
    train_x, train_y, test_x, test_y = digits()
    train_x, test_x = train_x.view(-1, *shape), test_x.view(-1, *shape)
    for _ in range(epochs):
        order = torch.randperm(len(train_x))
        for start in range(0, len(order), batch):
            index = order[start : start + batch]
            opt.step(train_x[index], train_y[index])
    model.eval()
    return accuracy(model, test_x, test_y)


def test_mlp_learns_digits():
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9)
    assert train(model, opt, epochs=5) > 0.93


def test_lenet_style_cnn_with_batchnorm_and_dropout_learns_digits():
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(64, 10),
    )
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9)
    assert train(model, opt, epochs=5, shape=(1, 8, 8)) > 0.8  # chance is 0.1; ~0.9 after 5-8 epochs


def step_net() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), Heaviside(), nn.Linear(128, 10))


def test_heaviside_net_learns_under_lfp_while_its_gradient_is_zero():
    train_x, train_y, _, _ = digits()
    model = step_net()
    first = model[0].weight.detach().clone()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(train_x[:64]), train_y[:64]).backward()
    assert model[0].weight.grad is None  # no gradient reaches the layer below the step
    sgd.step()
    assert torch.equal(model[0].weight, first)

    model = step_net()
    # a step unit's reward is divided by its (unbounded) pre-activation: keep the plain batch mean
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9, feedback_reduction="mean")
    before = model[0].weight.detach().clone()
    accuracy_after = train(model, opt, epochs=6)
    assert not torch.equal(model[0].weight, before)
    assert accuracy_after > 0.7  # chance is 0.1


def train_both(make_model, epochs: int, lr: float, shape: tuple[int, ...] = (64,)) -> dict[str, float]:
    """SGD on cross-entropy and LFP with the defaults, from the same start on the same batches (cosine schedule)."""
    train_x, train_y, test_x, test_y = digits()
    if shape != (64,):
        size = shape[-1]
        train_x, test_x = (
            nn.functional.interpolate(x.view(-1, 1, 8, 8), size=size, mode="bilinear").expand(-1, *shape).contiguous()
            for x in (train_x, test_x)
        )
    torch.manual_seed(0)
    start = make_model()
    results = {}
    for method in ("sgd", "lfp"):
        model = copy.deepcopy(start)
        if method == "lfp":
            optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=lr, momentum=0.9)
        else:
            optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        steps = epochs * -(-len(train_y) // 64)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        generator = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            for index in torch.randperm(len(train_y), generator=generator).split(64):
                if method == "lfp":
                    optimizer.step(train_x[index], train_y[index])
                else:
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(model(train_x[index]), train_y[index]).backward()
                    optimizer.step()
                schedule.step()
        model.eval()
        results[method] = accuracy(model, test_x, test_y)
    return results


@pytest.mark.parametrize("lr", [0.05, 0.5])
def test_defaults_keep_up_with_sgd_at_its_learning_rates(lr: float) -> None:
    # lr 0.5 is past SGD's best on this MLP; LFP must not collapse where SGD still trains
    results = train_both(lambda: nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)), epochs=4, lr=lr)
    assert results["sgd"] > 0.85
    assert results["lfp"] >= results["sgd"] - 0.02, results


@pytest.mark.filterwarnings("ignore::lfpoptim.ZeroParameterWarning")
def test_timm_resnet18_from_scratch_trains_like_sgd_with_the_defaults() -> None:
    # zero-initialised biases and timm's zero_init_last gains: filled by default, else LFP stays at chance
    timm = pytest.importorskip("timm")
    results = train_both(lambda: timm.create_model("resnet18", num_classes=10), epochs=2, lr=0.05, shape=(3, 16, 16))
    assert results["sgd"] > 0.7
    assert results["lfp"] >= results["sgd"] - 0.05, results
