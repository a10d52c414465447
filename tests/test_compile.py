"""A ``torch.compile``-d model: LFP steps run its original module eagerly, after one warning.

Nothing here compiles a graph: LFP never calls the compiled forward (that would take tens of
seconds on a small CPU machine), so these tests stay fast.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward
from lfpoptim.distributed import CompiledModelWarning, unwrap_model


def make_model() -> nn.Module:
    # Tanh: LFP's identity rule differs from the gradient here, so a rule that did not apply would show
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def batches(steps: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(12, 8), torch.randint(0, 4, (12,))) for _ in range(steps)]


def test_steps_on_a_compiled_model_equal_eager_steps_and_warn_once() -> None:
    model = make_model()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer = LFPOptimizer(compiled, SoftmaxLossReward(), lr=0.1, momentum=0.9)
        eager_optimizer = LFPOptimizer(eager, SoftmaxLossReward(), lr=0.1, momentum=0.9)
        for inputs, targets in batches():
            optimizer.step(inputs, targets)
            eager_optimizer.step(inputs, targets)
    compile_warnings = [warning for warning in caught if issubclass(warning.category, CompiledModelWarning)]
    assert len(compile_warnings) == 1
    assert "runs the original module of a torch.compile-d model eagerly" in str(compile_warnings[0].message)
    for param, expected in zip(model.parameters(), eager.parameters(), strict=True):
        assert torch.equal(param, expected)


def test_feedback_of_a_compiled_model_is_named_as_the_compiled_model_names_its_parameters() -> None:
    model = make_model()
    inputs, targets = batches(1)[0]
    expected = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1).feedback(inputs, targets)
    with pytest.warns(CompiledModelWarning):
        feedback = LFPOptimizer(torch.compile(model), SoftmaxLossReward(), lr=0.1).feedback(inputs, targets)
    assert set(feedback) == {f"_orig_mod.{name}" for name in expected}
    for name, value in expected.items():
        assert torch.equal(feedback[f"_orig_mod.{name}"], value)


def test_unwrap_model_finds_the_original_module() -> None:
    model = make_model()
    with pytest.warns(CompiledModelWarning):
        unwrapped = unwrap_model(torch.compile(model))
    assert unwrapped.module is model
    assert unwrapped.compiled
    assert unwrapped.ddp is None
    plain = unwrap_model(model)
    assert plain.module is model
    assert not plain.compiled


def test_modules_compiled_in_place_are_named_in_a_warning() -> None:
    model = make_model()
    model[2].compile()  # compiled in place: nothing to unwrap, and LFP's forward would go through Dynamo
    with pytest.warns(CompiledModelWarning, match=r"compiled in place with nn.Module.compile\(\): 2\. "):
        unwrapped = unwrap_model(model)
    assert unwrapped.module is model
    assert not unwrapped.compiled
