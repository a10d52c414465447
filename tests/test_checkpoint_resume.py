"""Checkpoints: stop mid-run, reload in a fresh process, continue: the uninterrupted run, bit for bit.

A CNN with BatchNorm and Dropout trains for `STEPS` steps with an LR scheduler, once without a
break and once stopped after `STOP_AT` steps: model, optimizer, scheduler and the RNG state (the
dropout masks to come) are saved with ``torch.save``, and a new Python process (this file run as
a script) builds everything afresh, loads the checkpoint with ``torch.load(weights_only=True)``
and trains on. The rewards (or losses) of every later step, the final parameters and buffers, the
optimizer state and the scheduler state must equal the uninterrupted run's exactly. Both runs
are on CPU, on one thread, with ``torch.use_deterministic_algorithms(True)``.

``LFPOptimizer`` runs with SGD (momentum, weight decay) and ``StepLR``; ``DropInLFPOptimizer``
with AdamW (its step counters are state too) and ``CosineAnnealingLR``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from hardening import FAMILIES, dropin_iteration, same_state, single_thread
from torch import nn

from lfpoptim import DropInLFPOptimizer, LFPOptimizer, SoftmaxLossReward

STEPS = 8
STOP_AT = 4
KINDS = ("lfp", "dropin")


def build(kind: str) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A fresh model, optimizer and scheduler, the same in every process."""
    torch.manual_seed(0)
    model = FAMILIES["cnn"].make()
    if kind == "lfp":
        optimizer = LFPOptimizer(model, SoftmaxLossReward(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    optimizer = DropInLFPOptimizer(model, torch.optim.AdamW, lr=0.01, weight_decay=0.01)
    return model, optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS)


def train(
    kind: str,
    model: nn.Module,
    optimizer: Any,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    steps: range,
) -> list[torch.Tensor]:
    """Train on the batches of ``steps``; return each step's reward (LFP) or loss (drop-in)."""
    logged = []
    for step in steps:
        batch = FAMILIES["cnn"].batch(seed=100 + step)
        if kind == "lfp":
            logged.append(optimizer.step(*batch).reward)
        else:
            logged.append(dropin_iteration(model, optimizer, batch))
        scheduler.step()
    return logged


@contextmanager
def deterministic() -> Iterator[None]:
    """One thread and deterministic algorithms, restored afterwards."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with single_thread():
            yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def resume(kind: str, checkpoint_path: Path, result_path: Path) -> None:
    """In the fresh process: build, load the checkpoint, train to the end, save what came out."""
    model, optimizer, scheduler = build(kind)
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"])
    logged = train(kind, model, optimizer, scheduler, range(checkpoint["step"], STEPS))
    torch.save(
        {
            "logged": logged,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
        result_path,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Per optimizer: (the uninterrupted run, the run resumed in a fresh process)."""
    directory = tmp_path_factory.mktemp("checkpoints")
    uninterrupted = {}
    with deterministic():
        for kind in KINDS:
            model, optimizer, scheduler = build(kind)
            logged = train(kind, model, optimizer, scheduler, range(STEPS))
            uninterrupted[kind] = {
                "logged": logged,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            }
            model, optimizer, scheduler = build(kind)
            train(kind, model, optimizer, scheduler, range(STOP_AT))
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "step": STOP_AT,
            }
            torch.save(checkpoint, directory / f"{kind}.pt")
    subprocess.run([sys.executable, __file__, str(directory)], check=True, timeout=300)
    return {
        kind: (uninterrupted[kind], torch.load(directory / f"{kind}-resumed.pt", weights_only=True)) for kind in KINDS
    }


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_resumed_in_a_fresh_process_is_the_uninterrupted_run(runs, kind):
    uninterrupted, resumed = runs[kind]
    expected = uninterrupted["logged"][STOP_AT:]
    assert len(resumed["logged"]) == len(expected) == STEPS - STOP_AT
    for step, (ours, theirs) in enumerate(zip(resumed["logged"], expected, strict=True), start=STOP_AT):
        assert torch.equal(ours, theirs), f"step {step}"
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    assert same_state(resumed["optimizer"], uninterrupted["optimizer"])
    assert resumed["scheduler"] == uninterrupted["scheduler"]


def test_the_runs_are_not_trivially_equal(runs):
    """The checkpoint carries state that matters: learning happened and the learning rate moved."""
    for kind in KINDS:
        uninterrupted, _ = runs[kind]
        first, last = uninterrupted["logged"][0], uninterrupted["logged"][-1]
        assert not torch.equal(first, last)
        assert uninterrupted["scheduler"]["_last_lr"][0] < uninterrupted["optimizer"]["param_groups"][0]["initial_lr"]


if __name__ == "__main__":
    with deterministic():
        for kind in KINDS:
            checkpoints = Path(sys.argv[1])
            resume(kind, checkpoints / f"{kind}.pt", checkpoints / f"{kind}-resumed.pt")
