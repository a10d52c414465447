import warnings

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward
from lfpoptim.analysis import ZeroParameterWarning
from lfpoptim.prune import (
    PruningCurve,
    feedback_scores,
    magnitude_prune,
    plot_pruning_curves,
    prunable_weights,
    pruned_fraction,
    pruning_curve,
    relevance_prune,
    remove_masks,
)


def distinct_weights_mlp() -> nn.Sequential:
    """Linear(3, 4)-ReLU-Linear(4, 2) whose 20 weights have distinct magnitudes 1..20, signs mixed."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    magnitudes = torch.randperm(20).float() + 1.0
    signs = torch.where(torch.rand(20) < 0.5, -1.0, 1.0)
    values = magnitudes * signs
    with torch.no_grad():
        model[0].weight.copy_(values[:12].view(4, 3))
        model[2].weight.copy_(values[12:].view(2, 4))
    return model


def dead_unit_mlp() -> nn.Sequential:
    """Linear(4, 3)-ReLU-Linear(3, 2) whose hidden unit 0 never fires (bias -100)."""
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].bias[0] = -100.0
    return model


def masks(model: nn.Sequential) -> dict[str, torch.Tensor]:
    return {name: getattr(model, name.split(".")[0]).weight_mask for name in prunable_weights(model)}


def test_prunable_weights_are_linear_and_conv_weights() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    assert prunable_weights(model) == ["0.weight", "3.weight"]
    assert prunable_weights(nn.Linear(2, 2)) == ["weight"]


def test_global_magnitude_pruning_removes_exactly_the_k_smallest() -> None:
    model = distinct_weights_mlp()
    magnitudes = torch.cat([model[0].weight.flatten(), model[2].weight.flatten()]).abs()
    expected_pruned = magnitudes <= 7.0  # the 7 smallest of 1..20, wherever they are

    magnitude_prune(model, amount=7)

    pruned = torch.cat([(mask == 0).flatten() for mask in masks(model).values()])
    assert torch.equal(pruned, expected_pruned)
    assert pruned_fraction(model) == pytest.approx(7 / 20)
    assert torch.count_nonzero(model[0].bias) == 4  # biases are not pruned


def test_layer_magnitude_pruning_removes_the_same_fraction_of_each_tensor() -> None:
    model = distinct_weights_mlp()
    originals = {name: tensor.detach().clone() for name, tensor in model.named_parameters() if "weight" in name}

    magnitude_prune(model, amount=0.5, scope="layer")

    for name, mask in masks(model).items():
        magnitudes = originals[name].abs().flatten()
        expected_pruned = magnitudes <= magnitudes.sort().values[magnitudes.numel() // 2 - 1]
        assert torch.equal((mask == 0).flatten(), expected_pruned), name


def test_relevance_pruning_removes_the_lowest_scores_not_the_smallest_weights() -> None:
    model = distinct_weights_mlp()
    # Scores that rank weights opposite to their magnitude: the largest weights go first.
    scores = {name: 1.0 / tensor.detach().abs() for name, tensor in model.named_parameters() if "weight" in name}
    magnitudes = torch.cat([model[0].weight.flatten(), model[2].weight.flatten()]).abs()

    relevance_prune(model, scores, amount=5)

    pruned = torch.cat([(mask == 0).flatten() for mask in masks(model).values()])
    assert torch.equal(pruned, magnitudes >= 16.0)


def test_feedback_scores_accumulate_absolute_mean_feedback_over_batches() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    reference = LFPOptimizer(model, SoftmaxLossReward(), feedback_reduction="mean", lr=0.1)
    expected = {name: torch.zeros_like(param) for name, param in model.named_parameters()}
    for inputs, targets in batches:
        for name, feedback in reference.feedback(inputs, targets).items():
            expected[name] += feedback.abs()
    before = {name: param.detach().clone() for name, param in model.named_parameters()}

    scores = feedback_scores(model, batches)

    assert scores.keys() == expected.keys()
    for name, total in expected.items():
        torch.testing.assert_close(scores[name], total)
        assert torch.equal(dict(model.named_parameters())[name], before[name])  # nothing changed


def test_relevance_pruning_by_feedback_removes_the_weights_no_reward_reaches() -> None:
    model = dead_unit_mlp()
    inputs, targets = torch.randn(32, 4), torch.randint(0, 2, (32,))
    outputs = model(inputs).detach()
    scores = feedback_scores(model, [(inputs, targets)])

    # The dead unit's 4 input weights and 2 output weights carry no feedback: they go first.
    relevance_prune(model, scores, amount=6)

    assert torch.equal(model[0].weight_mask[0], torch.zeros(4))
    assert torch.equal(model[2].weight_mask[:, 0], torch.zeros(2))
    assert int(model[0].weight_mask.sum() + model[2].weight_mask.sum()) == 18 - 6
    torch.testing.assert_close(model(inputs), outputs)  # they did not matter


def test_feedback_scores_do_not_warn_about_zero_parameters() -> None:
    # Scoring trains nothing, so a zero bias (BatchNorm's default) is no reason to warn.
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroParameterWarning)
        scores = feedback_scores(model, [(torch.randn(8, 4), torch.randint(0, 3, (8,)))])
    assert torch.count_nonzero(scores["1.bias"]) == 0  # |0| * anything


def test_feedback_scores_on_a_pruned_model_use_plain_names_and_score_pruned_weights_zero() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    magnitude_prune(model, amount=0.5)
    scores = feedback_scores(model, [(torch.randn(8, 4), torch.randint(0, 3, (8,)))])
    assert sorted(scores) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert torch.all(scores["0.weight"][model[0].weight_mask == 0] == 0)
    assert torch.count_nonzero(scores["0.weight"][model[0].weight_mask == 1]) > 0


def test_lfp_trains_a_pruned_model_and_pruned_weights_stay_zero() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    magnitude_prune(model, amount=0.6)
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9)
    inputs, targets = torch.randn(64, 4), torch.randint(0, 3, (64,))
    before = model[0].weight_orig.detach().clone()
    for _ in range(3):
        optimizer.step(inputs, targets)
    assert pruned_fraction(model) == pytest.approx(0.6, abs=0.01)
    kept = model[0].weight_mask == 1
    assert not torch.equal(model[0].weight_orig[kept], before[kept])
    # Masked entries receive no feedback, so even their hidden originals do not move.
    assert torch.equal(model[0].weight_orig[~kept], before[~kept])


def test_pruning_curve_at_zero_is_unpruned_metric_and_leaves_model_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    inputs = torch.randn(50, 4)
    targets = model(inputs).argmax(dim=1)  # the unpruned model is right on every sample
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    def accuracy(candidate: nn.Module) -> float:
        with torch.no_grad():
            return float((candidate(inputs).argmax(dim=1) == targets).float().mean())

    curve = pruning_curve(model, accuracy, fractions=[0.0, 0.5, 1.0])

    assert curve.fractions == (0.0, 0.5, 1.0)
    assert curve.values[0] == 1.0
    assert model.state_dict().keys() == state.keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])
    assert all(not module._forward_pre_hooks for module in model.modules())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_curve_prunes_each_copy_to_its_fraction(scope: str) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    scores = feedback_scores(model, [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))])
    fractions = [0.0, 0.25, 0.8, 1.0]
    for criterion in (None, scores):
        curve = pruning_curve(model, pruned_fraction, fractions, scores=criterion, scope=scope)
        assert curve.values == pytest.approx(fractions, abs=0.01)


def test_remove_masks_makes_pruning_permanent() -> None:
    model = distinct_weights_mlp()
    magnitude_prune(model, amount=0.3)
    assert remove_masks(model) == ["0.weight", "2.weight"]
    assert sorted(name for name, _ in model.named_parameters()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert not list(model.buffers())
    assert pruned_fraction(model) == pytest.approx(0.3)


def test_pruning_errors_tell_the_user_what_is_wrong() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"no parameter '1.weight'; its parameters are: 0.weight, 0.bias"):
        magnitude_prune(model, 0.5, names=["1.weight"])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got 1.5"):
        magnitude_prune(model, 1.5)
    with pytest.raises(ValueError, match="scope must be 'global' or 'layer'"):
        magnitude_prune(model, 0.5, scope="local")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match=r"no entry for '2\.weight'"):
        relevance_prune(model, {"0.weight": torch.ones(3, 2)}, 0.5)
    with pytest.raises(
        ValueError, match=r"scores\['0.weight'\] has shape \(2, 3\) but the parameter has shape \(3, 2\)"
    ):
        relevance_prune(model, {"0.weight": torch.ones(2, 3), "2.weight": torch.ones(2, 3)}, 0.5)
    with pytest.raises(ValueError, match="nothing to prune"):
        magnitude_prune(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="batches was empty"):
        feedback_scores(model, [])


def test_plot_pruning_curves_draws_mean_per_label() -> None:
    seeds = [PruningCurve((0.0, 0.5), (1.0, 0.6)), PruningCurve((0.0, 0.5), (0.8, 0.4))]
    ax = plot_pruning_curves({"LFP": seeds, "SGD": PruningCurve((0.0, 0.5), (0.9, 0.1))})
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["LFP", "SGD"]
    assert list(lines["LFP"].get_xdata()) == [0.0, 50.0]
    assert list(lines["LFP"].get_ydata()) == pytest.approx([0.9, 0.5])
    with pytest.raises(ValueError, match="different fractions"):
        plot_pruning_curves({"LFP": [seeds[0], PruningCurve((0.0, 0.9), (1.0, 0.1))]})
