"""Peak memory of one training step, measured the same way for every optimizer.

A step's peak is reported as two numbers:

* ``state_bytes``: what exists before the step and after it, whatever the optimizer: the model's
  parameters and buffers and the optimizer's state (SGD's momentum buffers), counted once per
  storage. Gradients are not part of it: every step measured here starts with
  ``zero_grad(set_to_none=True)``, so no gradient is alive when it starts.
* ``step_peak_bytes``: the most bytes allocated during the step and alive at the same time, on
  top of that state (activations saved for the backward pass, the new gradients, temporaries).

The peak memory of a step is their sum.

On CUDA the caching allocator keeps the statistics: ``max_memory_allocated() -
memory_allocated()`` around the step, after resetting the peak.

On CPU torch keeps no allocator statistics, so the step runs under
``torch.profiler.profile(profile_memory=True)``: every allocation and every free made by torch's
CPU allocator while the profiler runs becomes a ``[memory]`` event carrying its signed size. Summed
in time order, they give the bytes alive at each instant, counted from the step's start; their
maximum is the step's peak. One caveat decides how the step must be set up: the allocator only
knows the size of a block it allocated while memory profiling was on, so freeing an older block
is recorded as a free of 0 bytes. A step that freed pre-existing tensors (last step's gradients,
say) would look bigger than it is. That is why the gradients are released *before* the profiled
window; inside it, SGD and LFP update parameters, momentum and BatchNorm statistics in place and
free only what they allocated themselves, so the count is exact.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the model's parameters and buffers and of the optimizer's state tensors.

    Tensors that share a storage (tied weights, views) are counted once.
    """
    tensors: list[torch.Tensor] = [*model.parameters(), *model.buffers()]
    for param_state in optimizer.state.values():
        tensors.extend(value for value in param_state.values() if isinstance(value, torch.Tensor))
    return _storage_bytes(tensors)


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    storages: dict[tuple[torch.device, int], int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def step_peak_bytes(step: Callable[[], object], release: Callable[[], None], device: torch.device) -> int:
    """The most bytes alive at once during ``step()``, above what was alive before it.

    Args:
        step: one training step.
        release: called just before the measured window; must free everything the step would
            free that existed before it (in practice ``optimizer.zero_grad(set_to_none=True)``).
        device: where the step runs (``cpu`` or ``cuda``).
    """
    release()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"memory is measured on 'cpu' or 'cuda', got device {device}")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    return _peak_of_running_sum(_cpu_memory_events(profiler))


def _cpu_memory_events(profiler: profile) -> list[tuple[float, int]]:
    """``(time, signed bytes)`` of every CPU allocation and free the profiler recorded."""
    with tempfile.TemporaryDirectory() as directory:
        trace_path = Path(directory) / "trace.json"
        profiler.export_chrome_trace(str(trace_path))
        trace = json.loads(trace_path.read_text())
    return [
        (event["ts"], int(event["args"]["Bytes"]))
        for event in trace["traceEvents"]
        if event.get("name") == "[memory]" and event["args"].get("Device Type") == 0
    ]


def _peak_of_running_sum(events: list[tuple[float, int]]) -> int:
    alive = peak = 0
    for _, nbytes in sorted(events, key=lambda event: event[0]):
        alive += nbytes
        peak = max(peak, alive)
    return peak
