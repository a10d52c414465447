"""Gradient accumulation: micro-batches through `accumulate`, then one `step`, equal one big-batch step."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward

REDUCTIONS = ("sum", "mean", "normalized")
MICRO_BATCH_SIZES = (10, 7, 15)  # unequal on purpose: a mean must be over samples, not micro-batches


def make_model() -> nn.Module:
    # Tanh and a LayerNorm: rules other than the ReLU-and-linear case, where LFP is not the gradient
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4))
    nn.init.uniform_(model[3].bias, -0.1, 0.1)  # LFP never moves a zero bias
    return model


def micro_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(n, 8), torch.randint(0, 4, (n,))) for n in MICRO_BATCH_SIZES]


def concatenated(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def twin_optimizers(**settings: Any) -> tuple[nn.Module, LFPOptimizer, nn.Module, LFPOptimizer]:
    """A new model and a copy with the same weights, each trained by an LFPOptimizer with ``settings``."""
    model = make_model()
    reference = copy.deepcopy(model)
    return (
        model,
        LFPOptimizer(model, SoftmaxLossReward(), **settings),
        reference,
        LFPOptimizer(reference, SoftmaxLossReward(), **settings),
    )


def assert_same_parameters_and_grads(model: nn.Module, reference: nn.Module) -> None:
    for (name, param), expected in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(param.grad, expected.grad, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(param.detach(), expected.detach(), rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_accumulated_micro_batches_equal_one_step_on_the_concatenated_batch(reduction: str) -> None:
    # "sum" adds up 32 samples' feedback: a smaller rate keeps the steps of the same size
    lr = 0.01 if reduction == "sum" else 0.2
    model, opt, reference, reference_opt = twin_optimizers(lr=lr, momentum=0.9, feedback_reduction=reduction)
    for _ in range(3):  # momentum carries the accumulated steps into later ones
        batches = micro_batches()
        for x, y in batches:
            result = opt.accumulate(x, y)
            assert result.outputs.shape == (len(x), 4)
        assert opt.step() is None
        reference_opt.step(*concatenated(batches))
        assert_same_parameters_and_grads(model, reference)


def test_step_with_inputs_after_accumulate_adds_the_last_micro_batch() -> None:
    model, opt, reference, reference_opt = twin_optimizers(lr=0.2, clip_norm=0.5)
    batches = micro_batches()
    for x, y in batches[:-1]:
        opt.accumulate(x, y)
    result = opt.step(*batches[-1])
    assert result is not None
    assert result.outputs.shape == (MICRO_BATCH_SIZES[-1], 4)
    reference_opt.step(*concatenated(batches))
    # the clipping (here active) acts on the accumulated total, as on the big batch
    assert_same_parameters_and_grads(model, reference)


def test_accumulate_changes_nothing_until_the_step() -> None:
    model = make_model()
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.2, momentum=0.9)
    opt.step(*micro_batches()[0])  # momentum state and .grad now exist
    params = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    for x, y in micro_batches():
        opt.accumulate(x, y)
    for param, old_param, old_grad, old_momentum in zip(model.parameters(), params, grads, momentum, strict=True):
        assert torch.equal(param.detach(), old_param)
        assert torch.equal(param.grad, old_grad)
        assert torch.equal(opt.state[param]["momentum_buffer"], old_momentum)


def test_step_without_inputs_and_nothing_accumulated_says_what_to_do() -> None:
    opt = LFPOptimizer(make_model(), SoftmaxLossReward(), lr=0.1)
    with pytest.raises(RuntimeError, match=r"nothing was accumulated since the last step"):
        opt.step()
    x, y = micro_batches()[0]
    opt.accumulate(x, y)
    opt.step()
    with pytest.raises(RuntimeError, match=r"call step\(inputs, targets\) to train on a batch"):
        opt.step()  # the step consumed the sum


def test_zero_grad_discards_accumulated_feedback() -> None:
    model, opt, reference, reference_opt = twin_optimizers(lr=0.2)
    first, second, _ = micro_batches()
    opt.accumulate(*first)
    opt.zero_grad()
    opt.accumulate(*second)
    opt.step()
    reference_opt.step(*second)
    assert_same_parameters_and_grads(model, reference)


def test_failed_accumulate_leaves_the_sum_as_it_was() -> None:
    model, opt, reference, reference_opt = twin_optimizers(lr=0.2)
    first, second, _ = micro_batches()
    opt.accumulate(*first)
    with pytest.raises(ValueError, match="reward contains NaN"):
        opt.accumulate(second[0], torch.full((len(second[0]), 4), float("nan")))
    opt.step()
    reference_opt.step(*first)
    assert_same_parameters_and_grads(model, reference)


def test_changing_the_trainable_parameters_between_micro_batches_raises() -> None:
    model = make_model()
    opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1)
    first, second, _ = micro_batches()
    opt.accumulate(*first)
    model[0].weight.requires_grad_(False)
    with pytest.raises(RuntimeError, match=r"trainable parameters changed since the first accumulate\(\)"):
        opt.accumulate(*second)
