r"""Scaling an LFP step: micro-batches, processes, and wrapped models.

LFP feedback is a sum over samples, \(F_\theta = |\theta| \odot \sum_s J_{\theta,s}^\top n_s\), so
feedback for a large batch can be assembled from pieces: `FeedbackSum` adds up the raw factors
\(\sum_s J_{\theta,s}^\top n_s\) of micro-batches (gradient accumulation) and then of processes
(data parallelism), together with the number of samples, and only then are they averaged and
multiplied by \(|\theta|\). Since \(\theta\) is the same on every rank, that gives exactly the
feedback of one step on the concatenated global batch, also for unequal batch sizes.

Across processes `FeedbackSum.all_reduce_` packs every tensor (and the sample count) into one
flat buffer per device and dtype and sums it with **one** ``all_reduce``: LFP's backward pass is
a single ``torch.autograd.grad`` call, so there is no per-bucket overlap with the backward to gain,
and one collective has the least latency. It works with any backend (gloo on CPU, NCCL on GPU).

DistributedDataParallel cannot do this itself: its reducer averages ``.grad`` from hooks that fire
inside ``loss.backward()``, but LFP computes its feedback with ``torch.autograd.grad`` and writes
``.grad`` afterwards, so those hooks never fire. `LFPOptimizer` therefore runs the forward on the
wrapped module (`unwrap_model`) and reduces the feedback here.
"""

from __future__ import annotations

import sys
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup
    from torch.nn.parallel import DistributedDataParallel


class CompiledModelWarning(UserWarning):
    """LFP does not run a ``torch.compile``-d forward as compiled (warned once per model)."""


_checked_for_compile: weakref.WeakSet[nn.Module] = weakref.WeakSet()


@dataclass(frozen=True)
class UnwrappedModel:
    """The module LFP traces, and the wrappers that were around it.

    Attributes:
        module: the innermost module: its forward runs under the LFP rules.
        ddp: the ``DistributedDataParallel`` wrapper, if there was one.
        compiled: whether a ``torch.compile`` wrapper was removed.
    """

    module: nn.Module
    ddp: DistributedDataParallel | None
    compiled: bool


def _is_ddp(model: nn.Module) -> bool:
    if not dist.is_available():
        return False
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


def _is_compiled(model: nn.Module) -> bool:
    # A model can only be compiled once torch._dynamo is imported; importing it here would cost
    # about a second on every import of lfpoptim.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)


def _caller_outside_libraries() -> int:
    """The ``stacklevel`` of the innermost caller of the calling function outside lfpoptim and torch."""
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] in ("lfpoptim", "torch"):
        level, frame = level + 1, frame.f_back
    return level


def unwrap_model(model: nn.Module) -> UnwrappedModel:
    """Remove ``DistributedDataParallel`` and ``torch.compile`` wrappers, in any nesting.

    * ``DistributedDataParallel``: its forward prepares the reducer for a ``backward()`` that LFP
      never runs, so LFP calls the wrapped ``module`` and reduces feedback itself.
    * ``torch.compile(model)``: the LFP rules are a ``TorchFunctionMode`` that keeps Python state
      about the tensors of one forward and registers hooks on their autograd nodes; a compiled
      graph cannot carry that (Dynamo breaks the graph at every rule, compiles for tens of
      seconds, and the feedback drifts from eager LFP by about 1e-4). LFP therefore runs the
      original module (``_orig_mod``) eagerly, with a `CompiledModelWarning` once per model.
      The compiled wrapper stays what ``model(x)`` runs, for evaluation.
    * Modules compiled in place (``module.compile()``) cannot be unwrapped: their forward goes
      through Dynamo as described. A `CompiledModelWarning` says so, once per model.

    Args:
        model: the model an optimizer was given, wrapped or not.

    Returns:
        the innermost module and the wrappers found around it.
    """
    module, ddp, compiled = model, None, False
    while True:
        if _is_ddp(module):
            ddp = ddp if ddp is not None else module
            module = module.module
        elif _is_compiled(module):
            compiled = True
            module = module._orig_mod
        else:
            break
    if model not in _checked_for_compile:
        _checked_for_compile.add(model)
        _warn_about_compilation(module, compiled)
    return UnwrappedModel(module=module, ddp=ddp, compiled=compiled)


def _warn_about_compilation(module: nn.Module, unwrapped_compiled: bool) -> None:
    if unwrapped_compiled:
        warnings.warn(
            "LFP runs the original module of a torch.compile-d model eagerly: the LFP rules attach to "
            "each operation of the forward with Python state and autograd hooks, which a compiled graph "
            "cannot carry. The step is as fast as on the uncompiled model; calls of the compiled model "
            "itself (e.g. evaluation) stay compiled.",
            CompiledModelWarning,
            stacklevel=_caller_outside_libraries(),
        )
    in_place = [name or "the model" for name, sub in module.named_modules() if _compiled_in_place(sub)]
    if in_place:
        warnings.warn(
            f"compiled in place with nn.Module.compile(): {', '.join(in_place)}. LFP's forward then goes "
            "through Dynamo, which breaks the graph at every LFP rule: slow to compile, no faster, and the "
            "feedback differs slightly from eager LFP. Compile a wrapper instead, "
            "model = torch.compile(model), whose original module LFP runs eagerly.",
            CompiledModelWarning,
            stacklevel=_caller_outside_libraries(),
        )


def _compiled_in_place(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def default_process_group(model: nn.Module) -> ProcessGroup | None:
    """The process group to reduce ``model``'s feedback over, ``None`` for a single process.

    A ``DistributedDataParallel`` model's own group; for any other model the default (world)
    group once ``torch.distributed`` is initialised. ``None`` if that group has one process.

    Args:
        model: the model being trained, wrapped in ``DistributedDataParallel`` or not.

    Returns:
        the group, or ``None`` when there is nothing to reduce over.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    ddp = unwrap_model(model).ddp
    group = ddp.process_group if ddp is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _first_rank(group: ProcessGroup | None) -> int:
    """The global rank of the group's rank 0 (``torch.distributed.broadcast`` takes global ranks)."""
    if group is None or group is dist.group.WORLD:
        return 0
    return dist.get_global_rank(group, 0)


def _flat_groups(tensors: Sequence[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Indices of ``tensors`` by device and dtype: the tensors one flat buffer can hold."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault((tensor.device, tensor.dtype), []).append(index)
    return groups


def _split_flat(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``flat`` shaped like the tensors ``like`` that were concatenated into it."""
    pieces = flat.split([tensor.numel() for tensor in like])
    return [piece.view(tensor.shape) for piece, tensor in zip(pieces, like, strict=True)]


@torch.no_grad()
def broadcast_buffers_(module: nn.Module, group: ProcessGroup | None = None) -> None:
    """Copy the buffers of the group's first rank to every rank, in place.

    Buffers such as BatchNorm's running statistics are updated by each rank's own forward, so
    replicas drift apart. ``DistributedDataParallel(broadcast_buffers=True)`` (its default) copies
    rank 0's buffers at every forward, and `LFPOptimizer` does the same for a DDP-wrapped model
    before each step's first forward. For a plain model call this yourself, e.g. before
    evaluating or saving. One ``broadcast`` per device and dtype.

    Args:
        module: the model whose buffers to synchronise; every rank of ``group`` must call this.
        group: the process group; the default (world) group if ``None``.
    """
    buffers = list(module.buffers())
    source = _first_rank(group)
    for indices in _flat_groups(buffers).values():
        members = [buffers[index] for index in indices]
        flat = torch.cat([buffer.reshape(-1) for buffer in members])
        dist.broadcast(flat, src=source, group=group)
        for buffer, value in zip(members, _split_flat(flat, members), strict=True):
            buffer.copy_(value)


class FeedbackSum:
    r"""Raw feedback factors \(\sum_s J_\theta^\top n_s\) summed over samples, and their count.

    It starts from one LFP pass run with ``reduction="sum"``, adds further micro-batches with
    `add_` and the other processes' sums with `all_reduce_`; `feedback_factors` then divides
    by the number of samples for a mean. Multiplying by \(|\theta|\) (and normalising) is left to
    the caller, as after a single pass.

    Args:
        params: the parameters the factors belong to (kept to check later additions).
        grads: the first pass's factors, one per parameter; owned (added to in place) from now on.
        samples: how many samples the first pass saw.

    Attributes:
        params: the parameters, in the order of ``grads``.
        grads: the summed factors, one per parameter.
        samples: how many samples the sum covers.
    """

    def __init__(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], samples: int) -> None:
        self.params: list[torch.Tensor] = list(params)
        self.grads: list[torch.Tensor] = list(grads)
        self.samples: int = samples

    @torch.no_grad()
    def add_(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], samples: int) -> None:
        """Add another pass's factors (for the same parameters) and its sample count.

        Args:
            params: the parameters of that pass: the same tensors, in the same order, as ``params``.
            grads: its factors, one per parameter, added into ``grads`` in place.
            samples: how many samples it saw.

        Raises:
            RuntimeError: if ``params`` are not the parameters of the first pass.
        """
        if len(params) != len(self.params) or any(a is not b for a, b in zip(params, self.params, strict=True)):
            raise RuntimeError(
                "the trainable parameters changed since the first accumulate() of this step "
                "(a new parameter group, or requires_grad switched); call step() or zero_grad() first"
            )
        torch._foreach_add_(self.grads, list(grads))
        self.samples += samples

    @torch.no_grad()
    def all_reduce_(self, group: ProcessGroup | None = None) -> None:
        """Sum the factors and the sample counts over every process of ``group``, in place.

        Every rank must call it, with parameters of the same shapes in the same order. The
        tensors are packed into one flat buffer per device and dtype (nearly always just one),
        the sample count into the first float32/float64 buffer, and each buffer is summed by one
        asynchronous ``all_reduce``; afterwards ``grads`` are views into those buffers. If this
        raises, nothing has changed.

        Args:
            group: the process group; the default (world) group if ``None``.
        """
        groups = _flat_groups(self.grads)
        count_key = next((key for key in groups if key[1] in (torch.float32, torch.float64)), None)
        flats = []
        for key, indices in groups.items():
            pieces = [self.grads[index].reshape(-1) for index in indices]
            if key == count_key:
                pieces.append(torch.tensor([float(self.samples)], dtype=key[1], device=key[0]))
            flats.append(torch.cat(pieces))
        lone_count = None
        if count_key is None:  # only half-precision factors (or none): the count travels alone, in float64
            device = self.grads[0].device if self.grads else torch.device("cpu")
            lone_count = torch.tensor([float(self.samples)], dtype=torch.float64, device=device)
        works = [
            dist.all_reduce(tensor, group=group, async_op=True)
            for tensor in (flats if lone_count is None else [*flats, lone_count])
        ]
        for work in works:
            work.wait()

        reduced = list(self.grads)
        count = lone_count
        for (key, indices), flat in zip(groups.items(), flats, strict=True):
            summed = flat
            if key == count_key:
                summed, count = flat[:-1], flat[-1:]
            members = [self.grads[index] for index in indices]
            for index, view in zip(indices, _split_flat(summed, members), strict=True):
                reduced[index] = view
        self.grads = reduced
        self.samples = round(float(count)) if count is not None else 0

    @torch.no_grad()
    def feedback_factors(self, mean: bool) -> list[torch.Tensor]:
        """The summed factors, divided in place by the number of samples if ``mean`` (and there were any).

        Args:
            mean: divide by the sample count (``feedback_reduction="mean"``); else return the sums.

        Returns:
            ``grads``, one tensor per parameter.
        """
        if mean and self.samples > 0:
            torch._foreach_div_(self.grads, float(self.samples))
        return self.grads
