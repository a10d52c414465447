"""A short soak run (``benchmarks/soak.py`` for 100 steps): nothing accumulates from step to step.

The full run (1,000+ steps, with RSS) is a script, not a test: ``python benchmarks/soak.py``.
Here the checks are the ones that are exact: hooks, modes, attributes on parameters and the number
of live tensors, which a leak of a single tensor per step would change.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hardening import single_thread

SOAK_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", SOAK_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses resolve their module by name
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["soak"]
    return module


@pytest.mark.parametrize("kind", ["lfp", "dropin"])
def test_a_hundred_steps_leave_no_hook_mode_attribute_or_tensor_behind(soak_module, kind):
    with single_thread():
        result = soak_module.soak(kind, steps=100, every=25)
    first, *later = result.checkpoints[1:]
    for point in result.checkpoints:
        assert point.modes == 0, point
        assert point.param_attributes == 0, point  # no .feedback or anything else on a parameter
        assert point.hooks_added == 0, point  # the drop-in optimizer wraps model.forward instead
    for point in later:
        assert point.tensors == first.tensors, point
    assert result.hooks_added_at_end == 0
    if kind == "dropin":
        assert result.hooks_added_after_close == 0
        assert result.forward_left_after_close is False


def test_the_script_reports_growth_and_hooks(soak_module, capsys):
    with single_thread():
        status = soak_module.main(["--steps", "20", "--every", "10", "--optimizers", "lfp", "--threads", "1"])
    printed = capsys.readouterr().out
    assert status == 0
    assert "RSS growth from step 10 to 20:" in printed
    assert "hooks added at the end: 0" in printed
