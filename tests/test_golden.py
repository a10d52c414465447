"""The engine against golden feedback computed by the reference implementation (``lfprop`` 1.0.0).

Each ``golden_*.pt`` in ``tests/golden/`` (copied from the project's ``shared/golden/``, whose README
sits beside them) holds a tiny ``nn.Sequential``
(as its ``repr``), its parameters, a batch of digits, and the reference's logits, reward, feedback
(summed over the batch) and input reward. The engine, and the independent layer-by-layer reference
of ``lfp_reference.py``, must reproduce them to ``max|ours - ref| / max|ref| <= 1e-5`` per tensor.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from lfp_reference import reference_lfp
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward
from lfpoptim.engine import lfp_pass
from lfpoptim.rules import default_rules

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("golden_*.pt"))
TOLERANCE = 1e-5


def test_the_three_golden_files_are_there() -> None:
    assert len(GOLDEN_FILES) == 3, (
        f"expected golden_conv_maxpool.pt, golden_mlp_relu.pt and golden_mlp_silu.pt in {GOLDEN_DIR}"
    )


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|ours - ref| / max|ref|``."""
    return float((ours - ref).abs().max() / ref.abs().max())


def layer_from_repr(text: str) -> nn.Module:
    """Build one layer from its ``repr``, such as ``Conv2d(1, 4, kernel_size=(3, 3), stride=(1, 1))``.

    Only ``torch.nn`` layer names and literal arguments are accepted: the text is parsed, not run.
    """
    call = ast.parse(text.strip(), mode="eval").body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise ValueError(f"not a layer repr: {text!r}")
    layer = getattr(nn, call.func.id, None)
    if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
        raise ValueError(f"{call.func.id} is not a torch.nn layer")
    args = [ast.literal_eval(arg) for arg in call.args]
    kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords if keyword.arg}
    return layer(*args, **kwargs)


def sequential_from_repr(text: str) -> nn.Sequential:
    """Rebuild a flat ``nn.Sequential`` from its ``repr`` (one ``(index): Layer(...)`` per line)."""
    lines = text.strip().splitlines()
    if lines[0] != "Sequential(" or lines[-1] != ")":
        raise ValueError(f"not a flat nn.Sequential repr: {text!r}")
    layers = {}
    for line in lines[1:-1]:
        name, layer = line.strip().split(": ", 1)
        layers[name.strip("()")] = layer_from_repr(layer)
    return nn.Sequential(*(layers[str(index)] for index in range(len(layers))))


def load_golden(path: Path) -> tuple[dict[str, Any], nn.Sequential]:
    golden = torch.load(path, weights_only=True)
    model = sequential_from_repr(golden["model_repr"])
    model.load_state_dict(golden["model_state_dict"])
    model.train(golden["train_mode"])
    return golden, model


@pytest.fixture(params=GOLDEN_FILES, ids=[path.stem for path in GOLDEN_FILES])
def golden(request: pytest.FixtureRequest) -> tuple[dict[str, Any], nn.Sequential]:
    return load_golden(request.param)


def test_rebuilt_model_reproduces_the_golden_logits(golden: tuple[dict[str, Any], nn.Sequential]) -> None:
    data, model = golden
    assert repr(model) == data["model_repr"]
    with torch.no_grad():
        assert relative_error(model(data["inputs"]), data["logits"]) <= TOLERANCE


def test_feedback_matches_golden(golden: tuple[dict[str, Any], nn.Sequential]) -> None:
    data, model = golden
    optimizer = LFPOptimizer(model, SoftmaxLossReward(), epsilon=data["epsilon"], feedback_reduction="sum")
    feedback = optimizer.feedback(data["inputs"], data["labels"])
    assert feedback.keys() == data["feedback"].keys()
    errors = {name: relative_error(feedback[name], data["feedback"][name]) for name in feedback}
    assert max(errors.values()) <= TOLERANCE, f"{data['description']}: {errors}"


def test_input_reward_and_reward_match_golden(golden: tuple[dict[str, Any], nn.Sequential]) -> None:
    data, model = golden
    params = list(model.parameters())
    result = lfp_pass(
        model,
        data["inputs"],
        data["labels"],
        SoftmaxLossReward(),
        params,
        rules=default_rules(data["epsilon"]),
        reduction="sum",
        with_input_reward=True,
    )
    assert result.input_reward is not None
    assert relative_error(result.input_reward, data["input_reward"]) <= TOLERANCE
    assert relative_error(result.reward, data["reward"]) <= TOLERANCE
    assert relative_error(result.outputs, data["logits"]) <= TOLERANCE
    for (name, param), grad in zip(model.named_parameters(), result.grads, strict=True):
        assert relative_error(param.detach().abs() * grad, data["feedback"][name]) <= TOLERANCE, name


def test_layer_by_layer_reference_matches_golden(golden: tuple[dict[str, Any], nn.Sequential]) -> None:
    """The independent reference the other engine tests trust agrees with ``lfprop`` too."""
    data, model = golden
    ref = reference_lfp(copy.deepcopy(model), data["inputs"], data["labels"], SoftmaxLossReward(), data["epsilon"])
    errors = {name: relative_error(ref.feedback[name], data["feedback"][name]) for name in data["feedback"]}
    assert max(errors.values()) <= TOLERANCE, errors
    assert relative_error(ref.input_reward, data["input_reward"]) <= TOLERANCE
    assert relative_error(ref.reward, data["reward"]) <= TOLERANCE
