"""The element-wise arithmetic under the rules and the update, against the formulas written out plainly."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from lfpoptim.functional import CHUNK, weight_scale_
from lfpoptim.rules import stabilise, stabiliser_ratio

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def plain_stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """stab(z) = z + eps * (sign(z) + [z == 0]), as LFP.md writes it, computed in float64."""
    z = z.double()
    return z + epsilon * (torch.sign(z) + (z == 0).double())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epsilon", [1e-6, 0.1])
def test_stabilise_and_its_ratio_keep_the_dtype_and_match_the_formula(dtype: torch.dtype, epsilon: float) -> None:
    torch.manual_seed(0)
    z = torch.cat([torch.randn(200), torch.tensor([0.0, -0.0, 1e-7, -1e-7])]).to(dtype)
    stabilised, ratio = stabilise(z, epsilon), stabiliser_ratio(z, epsilon)
    assert stabilised.dtype == dtype
    assert ratio.dtype == dtype
    expected = plain_stabilise(z, float(torch.tensor(epsilon, dtype=dtype)))  # eps as the dtype can hold it
    tolerance = {torch.float16: 1e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-6)
    torch.testing.assert_close(stabilised.double(), expected, rtol=tolerance, atol=0.0)
    torch.testing.assert_close(ratio.double(), z.double() / expected, rtol=tolerance, atol=tolerance)
    assert stabilised[-3] > 0  # -0.0 is moved to +eps, as 0.0 is


def expected_scaling(param: torch.Tensor, grad: torch.Tensor, scaling: str) -> float:
    """c of the formula, written out plainly: 1, 1 / mean|theta|, or ||g|| / || |theta| * g ||."""
    if scaling == "mean_magnitude":
        return float(param.numel() / param.abs().sum())
    if scaling == "grad_norm":
        return float(grad.norm() / (param.abs() * grad).norm())
    return 1.0


@pytest.mark.parametrize("scaling", ["none", "mean_magnitude", "grad_norm"])
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_weight_scale_matches_the_formula_on_small_and_chunked_tensors(scaling: str, sign: float) -> None:
    torch.manual_seed(0)
    shapes = [(7,), (64, 33), (CHUNK + 5,), (3, CHUNK // 2)]  # the last two go through the chunked path
    params = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    grads = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    expected = [
        sign * expected_scaling(param, grad, scaling) * param.abs() * grad
        for param, grad in zip(params, grads, strict=True)
    ]
    assert weight_scale_(grads, params, sign=sign, scaling=scaling)
    for result, wanted in zip(grads, expected, strict=True):
        torch.testing.assert_close(result, wanted, rtol=1e-12, atol=0.0)


def test_grad_norm_scaling_leaves_tensors_without_feedback_at_zero() -> None:
    params = [torch.zeros(3), torch.ones(3), torch.ones(3)]
    grads = [torch.ones(3), torch.zeros(3), torch.tensor([3.0, 0.0, 4.0])]
    assert weight_scale_(grads, params, sign=-1.0, scaling="grad_norm")
    assert torch.equal(grads[0], torch.zeros(3))  # |theta| = 0: no update, not 0/0
    assert torch.equal(grads[1], torch.zeros(3))
    assert torch.equal(grads[2], torch.tensor([-3.0, 0.0, -4.0]))


@pytest.mark.parametrize("scaling", ["none", "mean_magnitude", "grad_norm"])
def test_weight_scale_reports_non_finite_feedback_in_any_tensor(scaling: str) -> None:
    params = [torch.ones(4), torch.ones(CHUNK + 1)]
    for bad in (float("nan"), float("inf"), -float("inf")):
        for index in range(2):
            grads = [torch.ones(4), torch.ones(CHUNK + 1)]
            grads[index][1] = bad
            assert not weight_scale_(grads, params, scaling=scaling)
    assert weight_scale_([torch.ones(4), torch.ones(CHUNK + 1)], params, scaling=scaling)


def test_stabiliser_arithmetic_runs_on_tensors_of_another_device() -> None:
    # the meta device applies torch's device checks without an accelerator: the cached CPU
    # constants must sit where torch accepts a CPU scalar next to a tensor of another device
    z = torch.randn(5, 3, device="meta")
    assert stabilise(z, 1e-6).device.type == "meta"
    assert stabiliser_ratio(z, 1e-6).device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stabiliser_constants_are_not_cast_on_every_call(dtype: torch.dtype) -> None:
    # the cached constants are in the tensor's dtype: a float64 constant next to float32 values
    # cost a copy (aten::_to_copy) per operation, five per LFP step on an MLP
    z = torch.randn(4, 3, dtype=dtype)
    stabilise(z, 1e-6), stabiliser_ratio(z, 1e-6)  # creates the cached constants outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        stabilise(z, 1e-6)
        stabiliser_ratio(z, 1e-6)
    names = [event.name for event in profiled.events()]
    assert "aten::copysign_" in names
    assert "aten::_to_copy" not in names, names
