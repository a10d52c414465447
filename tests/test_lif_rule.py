"""The LIF rule in the engine's one backward pass equals the rule written out step by step, in reward form.

`explicit_lif_feedback` below is the rule as the reference (lfprop's ``propagator_snn``) states it,
written independently of the engine: a forward that records every layer's input, current and
membranes at every step, then a loop backwards over time and layers that passes *rewards* (not
gradients), normalises them by |u_t| + |u_{t+1} + rho_t - u_t| + eps, carries the membrane's share
to the previous step and sums the parameters' feedback over time.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lfpoptim import LFPOptimizer
from lfpoptim.snn import LIF, RateCodedSpikeReward, SpikingLayer, SpikingMLP, TimeLoop

EPSILON = 1e-6


def explicit_lif_feedback(
    linears: list[nn.Linear],
    *,
    beta: float,
    threshold: float,
    reset: str,
    inputs: torch.Tensor,
    reward_of_spikes,
    epsilon: float = EPSILON,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(output spikes (T, B, C), weight feedback per layer, bias feedback per layer), summed over the batch."""
    steps, batch = inputs.shape[:2]
    membranes = [torch.zeros(batch, linear.out_features, dtype=inputs.dtype) for linear in linears]
    records: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in linears]
    output_spikes = []
    with torch.no_grad():
        for t in range(steps):
            signal = inputs[t]
            for index, linear in enumerate(linears):
                current = signal @ linear.weight.T + linear.bias
                before = membranes[index]
                fired_before = (before > threshold).to(inputs.dtype)
                if reset == "subtract":
                    after = beta * before + current - fired_before * threshold
                    removed = fired_before * threshold
                else:
                    after = beta * (1 - fired_before) * before + current
                    removed = fired_before * beta * before
                records[index].append((signal, before, after, removed, fired_before))
                membranes[index] = after
                signal = (after > threshold).to(inputs.dtype)
            output_spikes.append(signal)
        spikes = torch.stack(output_spikes)
        reward = reward_of_spikes(spikes)

        weight_feedback = [torch.zeros_like(linear.weight) for linear in linears]
        bias_feedback = [torch.zeros_like(linear.bias) for linear in linears]
        carried = [torch.zeros_like(membrane) for membrane in membranes]
        for t in reversed(range(steps)):
            spike_reward = reward[t]  # every output neuron, spiking or silent
            for index in reversed(range(len(linears))):
                signal, before, after, removed, fired_before = records[index][t]
                membrane_reward = spike_reward + carried[index]
                normalised = membrane_reward / ((before.abs() + (after + removed - before).abs()) + epsilon)
                weight, bias = linears[index].weight, linears[index].bias
                weight_feedback[index] += weight.abs() * (normalised.T @ signal)
                bias_feedback[index] += bias.abs() * normalised.sum(0)
                spike_reward = signal * (normalised @ weight)  # reward of the layer below's spikes
                kept = 1 - fired_before if reset == "zero" else torch.ones_like(fired_before)
                carried[index] = beta * kept * before * normalised
    return spikes, weight_feedback, bias_feedback


def tiny_mlp(reset: str, hidden: tuple[int, ...], dtype: torch.dtype) -> SpikingMLP:
    model = SpikingMLP(5, hidden, 3, beta=0.75, threshold=1.0, reset=reset).to(dtype)
    with torch.no_grad():  # strong enough weights that every layer spikes often
        for param in model.parameters():
            param.mul_(3.0)
    return model


def assert_feedback_matches(model: TimeLoop, inputs: torch.Tensor, targets: torch.Tensor, reset: str) -> float:
    reward = RateCodedSpikeReward()
    optimizer = LFPOptimizer(model, reward, preset="snn", feedback_reduction="sum", epsilon=EPSILON, lr=0.1)
    feedback = optimizer.feedback(inputs, targets)
    linears = [layer.layer for layer in model.network]
    beta, threshold = (float(getattr(model.network[0].neuron, name)) for name in ("beta", "threshold"))
    spikes, weights, biases = explicit_lif_feedback(
        linears,
        beta=beta,
        threshold=threshold,
        reset=reset,
        inputs=inputs,
        reward_of_spikes=lambda spikes: reward(spikes, targets),
    )
    assert torch.equal(model(inputs), spikes)
    assert 0.05 < spikes.mean() < 0.95  # the comparison covers spiking and silent outputs
    worst = 0.0
    for index in range(len(linears)):
        for name, expected in (("weight", weights[index]), ("bias", biases[index])):
            got = feedback[f"network.{index}.layer.{name}"]
            assert expected.abs().max() > 1e-2  # reward reached this tensor
            error = float((got - expected).abs().max() / expected.abs().max())
            assert error < 1e-5, f"layer {index} {name}: relative error {error:.2e}"
            worst = max(worst, error)
    return worst


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_feedback_matches_explicit_per_step_rule(reset: str, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    model = tiny_mlp(reset, hidden=(7,), dtype=dtype)
    inputs = torch.randn(6, 4, 5, dtype=dtype)
    targets = torch.randint(0, 3, (4,))
    worst = assert_feedback_matches(model, inputs, targets, reset)
    if dtype == torch.float64:
        assert worst < 1e-12  # the same arithmetic in another order


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_feedback_matches_explicit_rule_through_two_hidden_layers(reset: str) -> None:
    torch.manual_seed(5)
    model = tiny_mlp(reset, hidden=(6, 4), dtype=torch.float64)
    inputs = torch.randn(8, 3, 5, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2])
    assert_feedback_matches(model, inputs, targets, reset)


def test_silent_correct_output_neuron_is_pushed_to_spike() -> None:
    # the output neuron of class 0 never fires; the reward of its silent steps must still reach it
    torch.manual_seed(3)
    model = SpikingMLP(4, (8,), 2, beta=0.9)
    with torch.no_grad():
        model.network[0].layer.weight.uniform_(0.5, 1.0)
        model.network[1].layer.weight.uniform_(0.2, 0.4)
        model.network[1].layer.weight[0] = 0.01
        model.network[1].layer.bias.fill_(0.01)
    inputs = torch.rand(5, 6, 4) + 0.5
    targets = torch.zeros(6, dtype=torch.long)
    assert model(inputs)[..., 0].sum() == 0

    optimizer = LFPOptimizer(model, RateCodedSpikeReward(), preset="snn", feedback_reduction="sum")
    feedback = optimizer.feedback(inputs, targets)["network.1.layer.weight"][0]
    assert bool((feedback > 0).all())  # every weight into the silent neuron is to grow


def test_single_step_model_starts_at_its_membrane() -> None:
    # a network returning one step's spikes (no time stack) also hands silent neurons their reward
    torch.manual_seed(4)
    linear = nn.Linear(4, 3)
    with torch.no_grad():
        linear.bias.copy_(torch.tensor([-5.0, 2.0, 0.5]))  # neuron 0 silent, 1 spiking
    model = SpikingLayer(linear, LIF(beta=0.5))
    inputs = torch.rand(2, 4)
    reward = torch.tensor([[1.0, -1.0, 0.5], [2.0, 1.0, -0.5]])
    optimizer = LFPOptimizer(
        model, lambda outputs, targets: reward, preset="snn", feedback_reduction="sum", epsilon=EPSILON
    )
    feedback = optimizer.feedback(inputs)
    model.reset_state()
    with torch.no_grad():
        current = linear(inputs)
    normalised = reward / (current.abs() + EPSILON)  # u_t = 0: the denominator is |z|
    torch.testing.assert_close(feedback["layer.weight"], linear.weight.abs() * (normalised.T @ inputs))
    torch.testing.assert_close(feedback["layer.bias"], linear.bias.abs() * normalised.sum(0))
