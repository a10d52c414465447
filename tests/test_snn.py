"""lfpoptim.snn: LIF dynamics and state, encoders, the spike reward, models, the preset, snntorch, the example."""

from __future__ import annotations

import re
import runpy
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from digits import digits
from torch import nn

from lfpoptim import LFPOptimizer
from lfpoptim.rules import UncoveredOperationWarning
from lfpoptim.snn import (
    LIF,
    ConstantCurrentEncoder,
    RateCodedSpikeReward,
    RateEncoder,
    SpikingCNN,
    SpikingLayer,
    SpikingMLP,
    TimeLoop,
    lif_step,
    reset_neurons,
    spike_count_predictions,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# -- the neuron ---------------------------------------------------------------------------------


def run_neuron(neuron: LIF, currents: list[float]) -> tuple[list[float], list[float]]:
    spikes, membranes = [], []
    for current in currents:
        spikes.append(float(neuron(torch.tensor([current]))))
        membranes.append(float(neuron.membrane))
    return spikes, membranes


def test_lif_resets_by_subtraction_one_step_after_a_spike() -> None:
    spikes, membranes = run_neuron(LIF(beta=0.5, threshold=1.0), [0.8, 0.8, 0.8, 0.0, 0.0])
    # u: 0.8, 0.4 + 0.8 = 1.2 (spike), 0.6 + 0.8 - 1 = 0.4, 0.2, 0.1
    assert membranes == pytest.approx([0.8, 1.2, 0.4, 0.2, 0.1])
    assert spikes == [0.0, 1.0, 0.0, 0.0, 0.0]


def test_lif_resets_to_zero_one_step_after_a_spike() -> None:
    spikes, membranes = run_neuron(LIF(beta=0.5, threshold=1.0, reset="zero"), [0.8, 0.8, 0.8, 0.0])
    # u: 0.8, 1.2 (spike), 0 * 0.6 + 0.8 = 0.8, 0.4
    assert membranes == pytest.approx([0.8, 1.2, 0.8, 0.4])
    assert spikes == [0.0, 1.0, 0.0, 0.0]


def test_lif_without_reset_keeps_firing() -> None:
    spikes, membranes = run_neuron(LIF(beta=1.0, threshold=1.0, reset="none"), [0.6, 0.6, 0.0])
    assert membranes == pytest.approx([0.6, 1.2, 1.2])
    assert spikes == [0.0, 1.0, 1.0]


def test_lif_state_must_be_reset_for_a_new_batch() -> None:
    neuron = LIF()
    neuron(torch.ones(4, 3))
    with pytest.raises(ValueError, match=r"call reset_state\(\)"):
        neuron(torch.ones(2, 3))
    model = nn.Sequential(SpikingLayer(nn.Linear(3, 3), LIF()), SpikingLayer(nn.Linear(3, 2), LIF()))
    model(torch.ones(4, 3))
    assert reset_neurons(model) == 2
    assert all(layer.neuron.membrane is None for layer in model)
    assert model(torch.ones(2, 3)).shape == (2, 2)


def test_lif_stateless_call_as_snntorch() -> None:
    neuron = LIF(beta=0.5)
    spikes, membrane = neuron(torch.tensor([0.8]), torch.zeros(0))  # an empty membrane starts at rest
    spikes, membrane = neuron(torch.tensor([0.8]), membrane)
    assert float(membrane) == pytest.approx(1.2)
    assert float(spikes) == 1.0
    assert neuron.membrane is None  # the module's own state is untouched


def test_lif_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="beta must lie in"):
        LIF(beta=1.5)
    with pytest.raises(ValueError, match="threshold must be positive"):
        LIF(threshold=0.0)
    with pytest.raises(ValueError, match="reset must be one of"):
        LIF(reset="soft")
    with pytest.raises(ValueError, match="the membrane has shape"):
        lif_step(torch.ones(2), torch.zeros(3), 0.9, 1.0)


def test_heaviside_spike_has_zero_gradient() -> None:
    current = torch.tensor([0.5, 1.5], requires_grad=True)
    spikes, _ = lif_step(current, torch.zeros(2), 0.9, 1.0)
    spikes.sum().backward()
    assert torch.equal(current.grad, torch.zeros(2))


# -- encoders, reward ---------------------------------------------------------------------------


def test_constant_current_repeats_the_input_without_copying() -> None:
    inputs = torch.randn(4, 6)
    sequence = ConstantCurrentEncoder(num_steps=5)(inputs)
    assert sequence.shape == (5, 4, 6)
    assert sequence.data_ptr() == inputs.data_ptr()
    assert torch.equal(sequence[3], inputs)


def test_rate_encoder_fires_with_the_input_as_probability() -> None:
    inputs = torch.tensor([[0.0, 0.25, 0.9, 1.0, -1.0]])
    encoder = RateEncoder(num_steps=2000, generator=torch.Generator().manual_seed(0))
    sequence = encoder(inputs)
    assert sequence.shape == (2000, 1, 5)
    assert set(sequence.unique().tolist()) <= {0.0, 1.0}
    rates = sequence.mean(dim=0)[0]
    torch.testing.assert_close(rates, torch.tensor([0.0, 0.25, 0.9, 1.0, 0.0]), atol=0.04, rtol=0)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        RateEncoder(num_steps=0)


def test_rate_coded_reward_matches_the_reference_formula() -> None:
    # T = 4 steps, 1 sample, 3 classes, true class 1
    spikes = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]]).unsqueeze(1)
    reward = RateCodedSpikeReward(time_average=False)(spikes, torch.tensor([1]))
    push = 1 - torch.sigmoid(torch.tensor(1.0 - 2))  # class 1 spiked once; T // 2 = 2
    assert torch.allclose(reward[:, 0, 1], push.expand(4))  # at every step, spiking or not
    punish_0 = 1 - torch.sigmoid(torch.tensor(1.0 - 2))  # class 0 was silent once
    punish_2 = 1 - torch.sigmoid(torch.tensor(1.0 - 2))
    torch.testing.assert_close(reward[:, 0, 0], -spikes[:, 0, 0] * punish_0)
    torch.testing.assert_close(reward[:, 0, 2], -spikes[:, 0, 2] * punish_2)
    averaged = RateCodedSpikeReward()(spikes, torch.tensor([1]))
    torch.testing.assert_close(averaged, reward / 4)
    assert spike_count_predictions(spikes).tolist() == [0]  # classes 0 and 2 tie at 3: the first wins


def test_rate_coded_reward_explains_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(time steps, batch, classes\)"):
        RateCodedSpikeReward()(torch.zeros(4, 10), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"one class index per sample, shape \(4,\)"):
        RateCodedSpikeReward()(torch.zeros(3, 4, 10), torch.zeros(5, dtype=torch.long))


# -- models -------------------------------------------------------------------------------------


def test_time_loop_takes_static_inputs_with_an_encoder_or_sequences() -> None:
    torch.manual_seed(0)
    model = SpikingMLP(6, (8,), 3, encoder=ConstantCurrentEncoder(num_steps=5))
    static = torch.randn(4, 6)
    outputs = model(static)
    assert outputs.shape == (5, 4, 3)
    assert torch.equal(model(static), outputs)  # every call starts from rest
    assert torch.equal(model(static.expand(5, 4, 6)), outputs)
    assert model.batch_dim == 1

    without_encoder = SpikingMLP(6, (8,), 3)
    with pytest.raises(ValueError, match="static batch, but this model has no encoder"):
        without_encoder(static)
    with pytest.raises(ValueError, match="fit neither a static batch"):
        without_encoder(torch.randn(2, 5, 4, 6))


def test_spiking_cnn_runs_and_every_parameter_gets_feedback() -> None:
    torch.manual_seed(0)
    model = SpikingCNN(1, 10, image_size=(8, 8), encoder=ConstantCurrentEncoder(num_steps=6), threshold=0.5)
    inputs = digits()[0][:16].view(16, 1, 8, 8)
    assert model(inputs).shape == (6, 16, 10)
    optimizer = LFPOptimizer(model, RateCodedSpikeReward(), lr=0.1)
    assert optimizer.preset.name == "snn"  # chosen by "auto" for a model with LIF layers
    feedback = optimizer.feedback(inputs, digits()[1][:16])
    assert all(bool(value.abs().sum() > 0) for value in feedback.values()), {
        name: float(value.abs().sum()) for name, value in feedback.items()
    }


def test_mean_reduction_averages_over_the_batch_not_over_time() -> None:
    torch.manual_seed(0)
    model = SpikingMLP(6, (8,), 3, encoder=ConstantCurrentEncoder(num_steps=5))
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(3.0)
    inputs, targets = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    summed = LFPOptimizer(model, RateCodedSpikeReward(), feedback_reduction="sum", lr=0.1).feedback(inputs, targets)
    mean = LFPOptimizer(model, RateCodedSpikeReward(), feedback_reduction="mean", lr=0.1).feedback(inputs, targets)
    for name in summed:
        torch.testing.assert_close(mean[name], summed[name] / 4)


class OwnTimeLoop(nn.Module):
    """A user's own spiking network: it loops over time itself and never resets its neurons."""

    batch_dim = 1

    def __init__(self) -> None:
        super().__init__()
        self.hidden = SpikingLayer(nn.Linear(6, 8), LIF())
        self.out = SpikingLayer(nn.Linear(8, 3), LIF())

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.out(self.hidden(current)) for current in sequence])


def test_optimizer_resets_the_neurons_of_a_model_with_its_own_time_loop() -> None:
    torch.manual_seed(0)
    model = OwnTimeLoop()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(3.0)
    inputs, targets = torch.rand(5, 4, 6), torch.tensor([0, 1, 2, 0])
    optimizer = LFPOptimizer(model, RateCodedSpikeReward(), preset="snn", lr=0.1)
    first = optimizer.feedback(inputs, targets)
    assert model.hidden.neuron.membrane is not None  # the forward left its state behind
    second = optimizer.feedback(inputs, targets)
    assert any(bool(value.abs().sum() > 0) for value in first.values())
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=0, atol=0)
    optimizer.step(inputs, targets)
    optimizer.step(inputs[:, :2], targets[:2])  # a smaller batch: the state of the last one is gone


def test_default_preset_warns_that_the_neurons_have_no_rule() -> None:
    model = SpikingMLP(6, (8,), 3, encoder=ConstantCurrentEncoder(num_steps=3))
    optimizer = LFPOptimizer(model, RateCodedSpikeReward(), preset="default", lr=0.1)
    with pytest.warns(UncoveredOperationWarning, match="lif_step"):
        optimizer.feedback(torch.randn(2, 6) * 5, torch.tensor([0, 1]))


# -- training -----------------------------------------------------------------------------------


def spike_accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        return float((spike_count_predictions(model(inputs)) == targets).float().mean())


def test_sgd_through_the_heaviside_spike_changes_nothing_while_lfp_learns() -> None:
    train_x, train_y, test_x, test_y = digits()
    torch.manual_seed(0)
    make = lambda: SpikingMLP(64, (128,), 10, encoder=ConstantCurrentEncoder(num_steps=8))  # noqa: E731
    model = make()
    before = [param.detach().clone() for param in model.parameters()]
    sgd = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for batch in torch.randperm(len(train_y))[:512].split(128):
        sgd.zero_grad()
        F.cross_entropy(model(train_x[batch]).sum(dim=0), train_y[batch]).backward()
        assert all(torch.equal(param.grad, torch.zeros_like(param)) for param in model.parameters())
        sgd.step()
    assert all(torch.equal(param, start) for param, start in zip(model.parameters(), before, strict=True))

    torch.manual_seed(0)
    model = make()
    chance = spike_accuracy(model, test_x, test_y)
    lfp = LFPOptimizer(model, RateCodedSpikeReward(), preset="snn", lr=0.1, momentum=0.9)
    for _ in range(2):
        for batch in torch.randperm(len(train_y)).split(128):
            lfp.step(train_x[batch], train_y[batch])
    accuracy = spike_accuracy(model, test_x, test_y)
    assert chance < 0.3
    assert accuracy > 0.8, accuracy


def test_snn_digits_example_smoke_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # in this process (the imports of a fresh interpreter would cost more than the run)
    monkeypatch.setattr(sys, "argv", ["snn_digits.py", "--smoke", "--resets", "subtract"])
    with torch.random.fork_rng():  # the example seeds torch: leave the other tests' random state alone
        runpy.run_path(str(EXAMPLES / "snn_digits.py"), run_name="__main__")
    output = capsys.readouterr().out
    line = re.search(r"reset=subtract\s+final test accuracy (\d\.\d+)", output)
    assert line is not None, output
    assert float(line.group(1)) > 0.3  # four steps of the reference's setup already beat chance (0.1)


# -- snntorch, when installed -------------------------------------------------------------------


def test_snntorch_neuron_without_snntorch_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from lfpoptim.snn import convert_snntorch

    monkeypatch.setitem(sys.modules, "snntorch", None)  # as if it were not installed: importing it fails
    with pytest.raises(ImportError, match=r"pip install 'lfpoptim\[snn\]'"):
        SpikingLayer(nn.Linear(3, 2), nn.ReLU())
    with pytest.raises(ImportError, match="needs snntorch"):
        convert_snntorch(nn.Sequential(nn.Linear(3, 2)))
    assert isinstance(SpikingLayer(nn.Linear(3, 2), LIF()).neuron, LIF)  # lfpoptim's own neurons need nothing


def test_spiking_layer_refuses_a_module_that_is_no_neuron() -> None:
    pytest.importorskip("snntorch")
    with pytest.raises(TypeError, match=r"expected an lfpoptim\.snn\.LIF or an snntorch\.Leaky neuron, got ReLU"):
        SpikingLayer(nn.Linear(3, 2), nn.ReLU())


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_converted_snntorch_leaky_computes_the_same_spikes(reset: str) -> None:
    snntorch = pytest.importorskip("snntorch")
    from lfpoptim.snn import convert_snntorch

    torch.manual_seed(0)
    leaky = snntorch.Leaky(beta=0.8, threshold=0.7, reset_mechanism=reset)
    converted = convert_snntorch(nn.Sequential(snntorch.Leaky(beta=0.8, threshold=0.7, reset_mechanism=reset)))[0]
    assert isinstance(converted, LIF)
    currents = torch.randn(20, 5, 4)
    membrane = leaky.init_leaky()
    for current in currents:
        spikes, membrane = leaky(current, membrane)
        ours = converted(current)
        assert torch.equal(ours, spikes)
        assert torch.equal(converted.membrane, membrane)


def test_spiking_layer_accepts_snntorch_leaky_and_refuses_what_the_rule_does_not_cover() -> None:
    snntorch = pytest.importorskip("snntorch")
    layer = SpikingLayer(nn.Linear(3, 2), snntorch.Leaky(beta=0.7, init_hidden=True))
    assert isinstance(layer.neuron, LIF)
    assert float(layer.neuron.beta) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="reset_delay=False"):
        SpikingLayer(nn.Linear(3, 2), snntorch.Leaky(beta=0.7, reset_delay=False))
    with pytest.raises(ValueError, match="learn_beta"):
        SpikingLayer(nn.Linear(3, 2), snntorch.Leaky(beta=0.7, learn_beta=True))


def test_converted_snntorch_network_gets_the_feedback_of_the_same_lfpoptim_network() -> None:
    snntorch = pytest.importorskip("snntorch")
    from lfpoptim.snn import convert_snntorch

    torch.manual_seed(0)
    ours = SpikingMLP(64, (32,), 10, beta=0.8, encoder=ConstantCurrentEncoder(num_steps=6))
    network = nn.Sequential(
        nn.Linear(64, 32), snntorch.Leaky(beta=0.8, init_hidden=True), nn.Linear(32, 10), snntorch.Leaky(beta=0.8)
    )
    network[0].load_state_dict(ours.network[0].layer.state_dict())
    network[2].load_state_dict(ours.network[1].layer.state_dict())
    converted = TimeLoop(convert_snntorch(network), encoder=ConstantCurrentEncoder(num_steps=6))
    inputs, targets = digits()[0][:32], digits()[1][:32]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncoveredOperationWarning)
        theirs = LFPOptimizer(converted, RateCodedSpikeReward(), lr=0.1).feedback(inputs, targets)
    expected = LFPOptimizer(ours, RateCodedSpikeReward(), lr=0.1).feedback(inputs, targets)
    for (name, value), reference in zip(theirs.items(), expected.values(), strict=True):
        assert reference.abs().sum() > 0, name
        torch.testing.assert_close(value, reference, msg=name)
