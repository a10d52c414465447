"""All-zero parameters: filled by default so that LFP can train them, kept on request, said in one warning."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from lfpoptim import DropInLFPOptimizer, LFPOptimizer, SoftmaxLossReward, ZeroParameterWarning
from lfpoptim.analysis import zero_parameters
from lfpoptim.zero_init import ZERO_FILL, fill_zero_parameters_


def zero_bias_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    nn.init.zeros_(model[3].bias)
    return model


def test_fill_gives_vectors_plus_fill_and_matrices_signed_fill_without_touching_the_global_rng() -> None:
    model = zero_bias_mlp()
    nn.init.zeros_(model[0].weight)
    other = model[3].weight.detach().clone()
    state = torch.get_rng_state()
    assert fill_zero_parameters_(model) == ["0.weight", "1.bias", "3.bias"]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(model[1].bias, torch.full((5,), ZERO_FILL))
    assert torch.equal(model[3].bias, torch.full((3,), ZERO_FILL))
    assert torch.equal(model[0].weight.abs(), torch.full((5, 6), ZERO_FILL))
    assert 0 < int((model[0].weight > 0).sum()) < 30  # both signs
    assert torch.equal(model[3].weight, other)  # not all zero: untouched


def test_optimizer_fills_by_default_and_says_so_in_one_warning_at_the_constructing_line() -> None:
    model = zero_bias_mlp()
    with pytest.warns(ZeroParameterWarning) as caught:
        LFPOptimizer(model, SoftmaxLossReward(), lr=0.1)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message
    assert message.startswith("set 2 all-zero trainable parameter tensors to magnitude 0.001")
    assert "1.bias, 3.bias" in message
    assert "zero_parameters='keep'" in message
    assert caught[0].filename == __file__
    assert zero_parameters(model) == []


def test_keep_leaves_the_model_as_it_is_and_warns_that_those_tensors_will_not_train() -> None:
    model = zero_bias_mlp()
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    with pytest.warns(ZeroParameterWarning, match=r"2 trainable parameter tensors are all zero .*1\.bias, 3\.bias"):
        DropInLFPOptimizer(model, lr=0.1, zero_parameters="keep").close()
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name])


def test_only_the_optimizers_trainable_parameters_are_filled() -> None:
    model = zero_bias_mlp()
    model[1].bias.requires_grad_(False)
    with pytest.warns(ZeroParameterWarning, match="set 1 all-zero"):
        LFPOptimizer(model, SoftmaxLossReward(), params=model[3].parameters(), lr=0.1)
    assert not model[1].bias.any()  # frozen: left at zero
    assert model[3].bias.all()


def test_an_unknown_mode_is_refused_before_anything_changes() -> None:
    model = zero_bias_mlp()
    with pytest.raises(ValueError, match="zero_parameters must be 'fill' or 'keep', got 'zero'"):
        LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, zero_parameters="zero")  # type: ignore[arg-type]
    assert zero_parameters(model) == ["1.bias", "3.bias"]


def test_a_zero_init_last_resnet_block_trains_with_the_default_and_not_with_keep() -> None:
    # timm's zero_init_last sets the last BatchNorm gain of every block to 0: the block's branch
    # contributes nothing, so under LFP it gets no reward at all unless the gain is filled
    inputs, targets = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    moved = {}
    for mode in ("fill", "keep"):
        torch.manual_seed(0)
        model = timm.create_model("resnet18", num_classes=10)
        assert not model.layer1[0].bn2.weight.any()
        conv = model.layer1[0].conv1.weight
        before = conv.detach().clone()
        with pytest.warns(ZeroParameterWarning):
            optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.05, momentum=0.9, zero_parameters=mode)
        optimizer.step(inputs, targets)
        moved[mode] = float((conv.detach() - before).abs().max())
    assert moved["keep"] == 0.0
    assert moved["fill"] > 0.0
