"""Rewards: the reference's formulas, a torch-loss call shape, and clear errors for bad targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lfpoptim import rewards

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.2, 1.5], [0.0, 3.0, -2.0]])
LABELS = torch.tensor([0, 2, 0])
ONEHOT = torch.tensor([[1.0, 0, 0], [0, 0, 1], [1, 0, 0]])


def test_softmax_loss_reward_is_minus_logits_times_cross_entropy_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    F.cross_entropy(logits, LABELS, reduction="sum").backward()
    reward = rewards.SoftmaxLossReward()(LOGITS, LABELS)
    torch.testing.assert_close(reward, -LOGITS * logits.grad)


def test_softmax_loss_reward_accepts_class_probabilities():
    soft = torch.full((3, 3), 1 / 3)
    expected = LOGITS * (soft - LOGITS.softmax(dim=1))
    torch.testing.assert_close(rewards.SoftmaxLossReward()(LOGITS, soft), expected)


def test_sigmoid_rewards():
    expected = LOGITS * (ONEHOT - torch.sigmoid(LOGITS))
    torch.testing.assert_close(rewards.SigmoidLossReward()(LOGITS, LABELS), expected)
    logits = torch.tensor([[1.0], [-2.0]])
    binary = rewards.BinarySigmoidLossReward()(logits, torch.tensor([1, 0]))
    torch.testing.assert_close(binary, logits * (torch.tensor([[1.0], [0.0]]) - torch.sigmoid(logits)))


def test_bounded_softmax_clips_confident_probabilities():
    reward = rewards.BoundedSoftmaxReward(lower_bound=0.1, upper_bound=0.7)(LOGITS, LABELS)
    probabilities = LOGITS.softmax(dim=1)
    clipped = torch.where(probabilities > 0.7, 1.0, torch.where(probabilities < 0.1, 0.0, probabilities))
    torch.testing.assert_close(reward, LOGITS * (ONEHOT - clipped))
    signs = rewards.BoundedSoftmaxReward(logit_sign_only=True)(LOGITS, LABELS)
    torch.testing.assert_close(signs, LOGITS.sign() * (ONEHOT - probabilities))


def test_discrete_rewards():
    correct = rewards.CorrectClassificationReward()(LOGITS, LABELS)
    # sample 0 (argmax 0 == label 0) and sample 1 (argmax 2 == label 2) are right, sample 2 is wrong
    torch.testing.assert_close(correct, torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 0, 0]]))
    wrong = rewards.MisclassificationReward()(LOGITS, LABELS)
    torch.testing.assert_close(wrong, torch.tensor([[0.0, 0, 0], [0, 0, 0], [0, -1, 0]]))


def test_single_neuron_rewards():
    outputs = torch.tensor([[2.0, -1.0]])
    up = rewards.MaximizeSingleNeuron()(outputs)
    torch.testing.assert_close(up, outputs.sign() * (1 - torch.sigmoid(outputs)))
    torch.testing.assert_close(rewards.MinimizeSingleNeuron()(outputs), -up)
    only_second = rewards.MaximizeSingleNeuron(unit=1)(outputs)
    assert only_second[0, 0] == 0
    assert only_second[0, 1] == up[0, 1]
    with pytest.raises(ValueError, match="unit 5 is out of range for outputs with 2 units"):
        rewards.MaximizeSingleNeuron(unit=5)(outputs)


@pytest.mark.parametrize(
    ("targets", "error", "message"),
    [
        (torch.tensor([[0], [1], [2]]), ValueError, r"targets have shape \(3, 1\) but SoftmaxLossReward expects"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, "targets have dtype torch.float32 but class indices must be"),
        (torch.tensor([0, 1, 7]), ValueError, "target class index 7 is out of range for outputs with 3 classes"),
        (torch.tensor([0, -1, 2]), ValueError, "target class index -1 is out of range"),
        ([0, 1, 2], TypeError, "expects targets as a torch.Tensor"),
    ],
)
def test_bad_class_targets_are_named(targets, error, message):
    with pytest.raises(error, match=message):
        rewards.SoftmaxLossReward()(LOGITS, targets)


def test_outputs_must_be_batch_by_classes():
    with pytest.raises(ValueError, match=r"expects outputs shaped \(batch, classes\), got shape \(3,\)"):
        rewards.CorrectClassificationReward()(torch.zeros(3), LABELS)


def test_binary_reward_checks_target_count():
    with pytest.raises(ValueError, match="give one 0/1 target per logit"):
        rewards.BinarySigmoidLossReward()(torch.zeros(4, 1), torch.zeros(3))


def test_reward_dtype_follows_outputs():
    reward = rewards.SoftmaxLossReward()(LOGITS.double(), LABELS.int())
    assert reward.dtype == torch.float64
