import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lfpoptim import LFPOptimizer, SoftmaxLossReward
from lfpoptim.analysis import (
    SparsityTracker,
    ZeroParameterWarning,
    effective_parameters,
    gini,
    sparsity,
    update_sparsity,
    weight_gini,
    weight_sparsity,
    zero_parameters,
)


def dead_unit_mlp() -> nn.Sequential:
    """Linear(4, 3)-ReLU-Linear(3, 2) whose hidden unit 0 never fires (bias -100)."""
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].bias[0] = -100.0
    return model


def test_sparsity_counts_exact_zeros() -> None:
    tensor = torch.tensor([0.0, 1.0, -0.0, 2.0, 0.0, -3.0, 1e-30, 4.0, 5.0, 6.0])
    assert sparsity(tensor) == pytest.approx(0.3)  # 1e-30 is not zero


def test_sparsity_with_threshold_counts_magnitudes_up_to_it() -> None:
    tensor = torch.tensor([0.0, 0.1, -0.2, 0.5])
    assert sparsity(tensor, threshold=0.2) == pytest.approx(0.75)
    assert sparsity(tensor, threshold=0.05) == pytest.approx(0.25)


def test_sparsity_rejects_empty_tensor_and_negative_threshold() -> None:
    with pytest.raises(ValueError, match="empty"):
        sparsity(torch.empty(0))
    with pytest.raises(ValueError, match="non-negative"):
        sparsity(torch.ones(3), threshold=-1.0)


def test_gini_of_equal_magnitudes_is_zero() -> None:
    assert gini(torch.full((7,), 0.3)) == pytest.approx(0.0, abs=1e-12)
    assert gini(torch.tensor([1.0, -1.0, 1.0, -1.0])) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("size", [1, 2, 10, 1000])
def test_gini_of_one_hot_is_one_minus_one_over_n(size: int) -> None:
    one_hot = torch.zeros(size)
    one_hot[size // 2] = -2.5
    assert gini(one_hot) == pytest.approx(1.0 - 1.0 / size)


def test_gini_matches_mean_absolute_difference_formula() -> None:
    # The same index written without sorting: sum_ij |c_i - c_j| / (2 N sum_i c_i).
    values = torch.randn(3, 17)
    magnitudes = values.abs().flatten().double().numpy()
    reference = np.abs(magnitudes[:, None] - magnitudes[None, :]).sum() / (2 * magnitudes.size * magnitudes.sum())
    assert gini(values) == pytest.approx(reference, rel=1e-10)


def test_gini_is_scale_invariant_and_undefined_for_zeros() -> None:
    values = torch.randn(50)
    assert gini(1000.0 * values) == pytest.approx(gini(values), rel=1e-6)
    assert math.isnan(gini(torch.zeros(5)))


def test_update_sparsity_of_feedback_sees_the_dead_unit() -> None:
    model = dead_unit_mlp()
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1)
    inputs, targets = torch.randn(16, 4), torch.randint(0, 2, (16,))
    # No reward flows through hidden unit 0: its row of 0.weight (4 of 12), its bias (1 of 3)
    # and its column of 2.weight (2 of 6) get no feedback; everything else does.
    assert update_sparsity(optimizer.feedback(inputs, targets)) == pytest.approx(
        {"0.weight": 1 / 3, "0.bias": 1 / 3, "2.weight": 1 / 3, "2.bias": 0.0}
    )


def test_tracker_reads_feedback_zeros_from_grad_after_lfp_step() -> None:
    model = dead_unit_mlp()
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1)
    tracker = SparsityTracker(model, every=2, track_gini=True)
    inputs, targets = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for _ in range(3):
        optimizer.step(inputs, targets)
        tracker.update()

    assert [record.step for record in tracker.records] == [1, 3]
    expected = {"0.weight": 1 / 3, "0.bias": 1 / 3, "2.weight": 1 / 3, "2.bias": 0.0}
    assert tracker.records[-1].update_sparsity == pytest.approx(expected)
    assert tracker.mean_update_sparsity() == pytest.approx(expected)
    assert tracker.records[-1].weight_gini == pytest.approx(weight_gini(model))
    assert tracker.records[-1].weight_sparsity == dict.fromkeys(expected, 0.0)


def test_tracker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="every must be a positive integer"):
        SparsityTracker(nn.Linear(2, 2), every=0)


def test_weight_measures_see_pruned_weights_as_masked_under_plain_name() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    prune.l1_unstructured(model[0], "weight", amount=8)
    names = [name for name, _ in effective_parameters(model)]
    assert sorted(names) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert weight_sparsity(model)["0.weight"] == pytest.approx(8 / 20)
    assert weight_sparsity(model)["2.weight"] == 0.0
    assert weight_gini(model)["0.weight"] == pytest.approx(gini(model[0].weight_orig * model[0].weight_mask))


def test_zero_parameters_lists_all_zero_trainable_tensors() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[3].bias.zero_()
        model[0].weight[0, 0] = 0.0  # partly zero: not listed
    assert zero_parameters(model) == ["1.bias", "3.bias"]  # BatchNorm's bias starts at zero
    assert zero_parameters(model, params=model[3].parameters()) == ["3.bias"]
    model[3].bias.requires_grad_(False)
    assert zero_parameters(model) == ["1.bias"]


def test_zero_parameters_stay_zero_under_lfp_but_not_under_sgd() -> None:
    # Why zero_parameters exists: F = |theta| * (J^T n) vanishes at theta = 0.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    inputs, targets = torch.randn(32, 3), torch.randint(0, 2, (32,))
    with pytest.warns(ZeroParameterWarning, match="will not change under LFP"):
        optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9, zero_parameters="keep")
    for _ in range(5):
        optimizer.step(inputs, targets)
    assert zero_parameters(model) == ["1.bias"]
    assert not torch.equal(model[1].weight, torch.ones(4))  # the rest of the layer trained

    sgd_model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=0.1)
    nn.functional.cross_entropy(sgd_model(inputs), targets).backward()
    sgd.step()
    assert zero_parameters(sgd_model) == []


def test_a_small_nonzero_initial_bias_trains_under_lfp() -> None:
    # The remedy docs/pruning.md gives: start at a small non-zero value instead of 0.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    nn.init.constant_(model[1].bias, 1e-3)
    inputs, targets = torch.randn(32, 3), torch.randint(0, 2, (32,))
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9)
    for _ in range(10):
        optimizer.step(inputs, targets)
    bias = model[1].bias.detach()
    assert float((bias - 1e-3).abs().max()) > 5e-3  # moved by several times its start
    assert bool((bias < 0).any())  # and can cross zero: it is not confined to its sign
