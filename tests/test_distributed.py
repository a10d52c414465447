"""Data-parallel LFP over torch.distributed: two gloo processes on loopback train like one process.

The two worker processes are started once (``torch.multiprocessing``, spawn): they run every
scenario in one process group and write what they measured to files, which the tests compare
with single-process training on the concatenated global batches. Then they run
``examples/ddp_digits.py --smoke`` as ``torchrun --nproc_per_node 2`` would (same environment
variables), which saves starting a launcher and two more Python processes.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import re
import runpy
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lfpoptim import LFPOptimizer, SoftmaxLossReward
from lfpoptim.distributed import broadcast_buffers_, default_process_group

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

WORLD_SIZE = 2
GLOBAL_BATCH_SIZES = (24, 13, 17, 24)  # odd sizes: the ranks' shards differ in size
LEARNING_RATE = {"sum": 0.01, "mean": 0.2, "normalized": 0.2}
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ddp_digits.py"
TIMEOUT_S = 120


@dataclass(frozen=True)
class Scenario:
    """One training run: how the model is wrapped, the reduction, micro-batches per step."""

    name: str
    wrap: str  # "ddp" or "plain"
    reduction: str
    micro_batches: int = 1


SCENARIOS = (
    Scenario("ddp_normalized", "ddp", "normalized"),
    Scenario("plain_mean", "plain", "mean"),
    Scenario("ddp_sum_accumulated", "ddp", "sum", micro_batches=2),
)


def make_model() -> nn.Module:
    torch.manual_seed(0)  # every process builds the same initial weights
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4))
    nn.init.uniform_(model[3].bias, -0.1, 0.1)  # LFP never moves a zero bias
    return model


def global_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    for size in GLOBAL_BATCH_SIZES:
        yield torch.randn(size, 8, generator=generator), torch.randint(0, 4, (size,), generator=generator)


def make_optimizer(model: nn.Module, reduction: str) -> LFPOptimizer:
    return LFPOptimizer(
        model, SoftmaxLossReward(), lr=LEARNING_RATE[reduction], momentum=0.9, feedback_reduction=reduction
    )


def train_single_process(reduction: str) -> list[torch.Tensor]:
    model = make_model()
    optimizer = make_optimizer(model, reduction)
    for inputs, targets in global_batches():
        optimizer.step(inputs, targets)
    return [p.detach() for p in model.parameters()]


# -- what runs in each worker process ----------------------------------------------------------


def _run_scenario(scenario: Scenario, rank: int) -> dict[str, Any]:
    model = make_model()
    wrapped = DistributedDataParallel(model) if scenario.wrap == "ddp" else model
    optimizer = make_optimizer(wrapped, scenario.reduction)
    collectives_per_step = []
    for inputs, targets in global_batches():
        local_inputs, local_targets = inputs.tensor_split(WORLD_SIZE)[rank], targets.tensor_split(WORLD_SIZE)[rank]
        before = _AllReduceCounter.calls
        micro = zip(
            local_inputs.tensor_split(scenario.micro_batches),
            local_targets.tensor_split(scenario.micro_batches),
            strict=True,
        )
        for micro_inputs, micro_targets in micro:
            optimizer.accumulate(micro_inputs, micro_targets)
        optimizer.step()
        collectives_per_step.append(_AllReduceCounter.calls - before)
    return {"params": [p.detach().clone() for p in model.parameters()], "collectives": collectives_per_step}


def _run_batch_norm(rank: int) -> dict[str, Any]:
    """A DDP model with BatchNorm in train mode: its buffers follow DDP's broadcast_buffers=True."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    nn.init.uniform_(model[1].bias, -0.1, 0.1)
    optimizer = make_optimizer(DistributedDataParallel(model), "normalized")
    buffers_as_ddp = []
    for inputs, targets in global_batches():
        local_inputs, local_targets = inputs.tensor_split(WORLD_SIZE)[rank], targets.tensor_split(WORLD_SIZE)[rank]
        # what DDP's forward would leave: rank 0's buffers, then updated with this rank's batch
        expected = copy.deepcopy(model)
        broadcast_buffers_(expected)
        with torch.no_grad():
            expected(local_inputs)
        optimizer.step(local_inputs, local_targets)
        buffers_as_ddp.append(all(torch.equal(a, b) for a, b in zip(model.buffers(), expected.buffers(), strict=True)))
    running_mean_before_sync = model[1].running_mean.clone()
    broadcast_buffers_(model)
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers_as_ddp": buffers_as_ddp,
        "running_mean_before_sync": running_mean_before_sync,
        "running_mean_after_sync": model[1].running_mean.clone(),
    }


def _run_bfloat16(rank: int) -> dict[str, Any]:
    """A DDP model entirely in bfloat16: the sample count cannot share the bfloat16 buffer."""
    model = make_model().bfloat16()
    optimizer = make_optimizer(DistributedDataParallel(model), "mean")
    collectives_per_step = []
    for inputs, targets in global_batches():
        local_inputs, local_targets = inputs.tensor_split(WORLD_SIZE)[rank], targets.tensor_split(WORLD_SIZE)[rank]
        before = _AllReduceCounter.calls
        optimizer.step(local_inputs.bfloat16(), local_targets)
        collectives_per_step.append(_AllReduceCounter.calls - before)
    return {"params": [p.detach().clone() for p in model.parameters()], "collectives": collectives_per_step}


class _AllReduceCounter:
    """Counts ``torch.distributed.all_reduce`` calls in a worker."""

    calls = 0
    original = staticmethod(dist.all_reduce)

    @classmethod
    def install(cls) -> None:
        def counting_all_reduce(*args: Any, **kwargs: Any) -> Any:
            cls.calls += 1
            return cls.original(*args, **kwargs)

        dist.all_reduce = counting_all_reduce


def _run_example(rank: int, port: int, output: Path) -> None:
    """``examples/ddp_digits.py --smoke`` with the environment torchrun gives rank ``rank``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_PORT=str(port))
    sys.argv = [str(EXAMPLE), "--smoke"]
    sys.path.insert(0, str(EXAMPLE.parent))  # as torchrun does: the example imports examples/_digits.py
    with output.open("w") as stream, contextlib.redirect_stdout(stream):
        runpy.run_path(str(EXAMPLE), run_name="__main__")


def _worker(rank: int, ports: tuple[int, int], results: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        _AllReduceCounter.install()
        measured = {scenario.name: _run_scenario(scenario, rank) for scenario in SCENARIOS}
        measured["batch_norm"] = _run_batch_norm(rank)
        measured["bfloat16"] = _run_bfloat16(rank)
        measured["default_group_is_world"] = default_process_group(make_model()) is dist.group.WORLD
        torch.save(measured, Path(results) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    _run_example(rank, ports[1], Path(results) / f"example{rank}.txt")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where the two worker processes, now finished, wrote what they measured."""
    results = tmp_path_factory.mktemp("ranks")
    context = mp.start_processes(
        _worker, args=((_free_port(), _free_port()), str(results)), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD_SIZE} worker processes did not finish within {TIMEOUT_S} s")
    return results


@pytest.fixture(scope="module")
def ranks(results: Path) -> list[dict[str, Any]]:
    """What each worker process measured, by rank."""
    return [torch.load(results / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.name)
def test_ranks_hold_bit_identical_parameters(ranks: list[dict[str, Any]], scenario: Scenario) -> None:
    first, second = (rank[scenario.name]["params"] for rank in ranks)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.name)
def test_two_processes_train_like_one_process_on_the_global_batch(
    ranks: list[dict[str, Any]], scenario: Scenario
) -> None:
    single = train_single_process(scenario.reduction)
    distributed = ranks[0][scenario.name]["params"]
    initial = list(make_model().parameters())
    for got, expected, start in zip(distributed, single, initial, strict=True):
        assert not torch.equal(expected, start.detach())  # training moved every tensor
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.name)
def test_one_all_reduce_per_step(ranks: list[dict[str, Any]], scenario: Scenario) -> None:
    for rank in ranks:
        assert rank[scenario.name]["collectives"] == [1] * len(GLOBAL_BATCH_SIZES)


def test_bfloat16_model_stays_identical_and_close_to_one_process(ranks: list[dict[str, Any]]) -> None:
    first, second = (rank["bfloat16"] for rank in ranks)
    for a, b in zip(first["params"], second["params"], strict=True):
        assert torch.equal(a, b)
    # bfloat16 buffer plus the sample count on its own (float64)
    assert first["collectives"] == [2] * len(GLOBAL_BATCH_SIZES)
    model = make_model().bfloat16()
    optimizer = make_optimizer(model, "mean")
    for inputs, targets in global_batches():
        optimizer.step(inputs.bfloat16(), targets)
    for got, expected in zip(first["params"], model.parameters(), strict=True):
        # summing in another order rounds differently in bfloat16: a few units in the last place
        torch.testing.assert_close(got.float(), expected.detach().float(), rtol=0.02, atol=2e-3)


def test_batch_norm_buffers_follow_ddp_broadcast_and_parameters_stay_identical(
    ranks: list[dict[str, Any]],
) -> None:
    first, second = (rank["batch_norm"] for rank in ranks)
    for a, b in zip(first["params"], second["params"], strict=True):
        assert torch.equal(a, b)
    assert first["buffers_as_ddp"] == second["buffers_as_ddp"] == [True] * len(GLOBAL_BATCH_SIZES)
    # each rank's last forward saw its own batch; an explicit broadcast makes them agree
    assert not torch.equal(first["running_mean_before_sync"], second["running_mean_before_sync"])
    assert torch.equal(second["running_mean_after_sync"], first["running_mean_before_sync"])


def test_a_plain_model_uses_the_world_group_once_initialised(ranks: list[dict[str, Any]]) -> None:
    assert all(rank["default_group_is_world"] for rank in ranks)
    assert default_process_group(make_model()) is None  # this process has no process group


def test_ddp_digits_example_trains_and_keeps_replicas_identical(results: Path) -> None:
    printed = (results / "example0.txt").read_text()
    accuracy = re.search(r"test accuracy (\d\.\d+)", printed)
    assert accuracy is not None, printed
    assert float(accuracy.group(1)) > 0.5  # one epoch takes the MLP far from chance (0.1)
    assert f"parameters identical on all {WORLD_SIZE} ranks" in printed
    assert (results / "example1.txt").read_text() == ""  # only rank 0 prints
