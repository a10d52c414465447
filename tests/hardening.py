"""Shared by the hardening suites: the model families, fault injection, and a bit-exact snapshot.

The families are the model shapes lfpoptim supports today: an MLP, a CNN with BatchNorm and
Dropout, a residual CNN written like timm's ``BasicBlock`` (``x += shortcut``, in-place ReLU),
timm's ``resnet18`` and a network of Heaviside steps. `Snapshot` records everything a failed step
must leave alone, down to the bit; `Snapshot.differences` names what changed.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torch.nn.modules.module as module_globals
from torch import nn
from torch.overrides import TorchFunctionMode

from lfpoptim import DropInLFPOptimizer, Heaviside, LFPOptimizer, SoftmaxLossReward
from lfpoptim.zero_init import fill_zero_parameters_

CLASSES = 5


class InjectedFault(RuntimeError):  # noqa: N818 (a fault, not an error)
    """The exception the suites raise on purpose (so that no other error passes for it)."""


# -- model families ---------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """timm's ``BasicBlock`` shape: conv-bn-relu-conv-bn, ``x += shortcut``, in-place ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act2(x)


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.SiLU(), nn.Linear(24, CLASSES))


def make_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Dropout(0.2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, CLASSES),
    )


def make_residual() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        BasicBlock(4, 4),
        BasicBlock(4, 8, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, CLASSES),
    )


def make_resnet18() -> nn.Module:
    import timm

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return timm.create_model("resnet18", pretrained=False, num_classes=CLASSES)


def make_heaviside() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 24), Heaviside(), nn.Linear(24, 24), Heaviside(), nn.Linear(24, CLASSES))


def without_zero_parameters(model: nn.Module) -> nn.Module:
    """Fill all-zero parameters as the optimizers do by default, so that building one changes nothing."""
    fill_zero_parameters_(model)
    return model


@dataclass(frozen=True)
class Family:
    """A model family: how to build a model and a batch for it."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    batch_size: int

    def make(self) -> nn.Module:
        """A new model of this family, in train mode, without all-zero parameters."""
        return without_zero_parameters(self.build())

    def batch(self, seed: int, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A reproducible batch (inputs, class indices) that does not touch the global RNG."""
        generator = torch.Generator().manual_seed(seed)
        size = self.batch_size if batch_size is None else batch_size
        inputs = torch.randn(size, *self.input_shape, generator=generator)
        return inputs, torch.randint(0, CLASSES, (size,), generator=generator)


FAMILIES = {
    family.name: family
    for family in (
        Family("mlp", make_mlp, (16,), 8),
        Family("cnn", make_cnn, (1, 8, 8), 6),
        Family("residual", make_residual, (1, 8, 8), 4),
        Family("resnet18", make_resnet18, (3, 16, 16), 2),
        Family("heaviside", make_heaviside, (16,), 8),
    )
}
SMALL_FAMILIES = ("mlp", "cnn", "residual", "heaviside")


def make_lfp(model: nn.Module) -> LFPOptimizer:
    return LFPOptimizer(model, SoftmaxLossReward(), lr=0.05, momentum=0.9, weight_decay=1e-4)


def make_dropin(model: nn.Module) -> DropInLFPOptimizer:
    return DropInLFPOptimizer(model, lr=0.05, momentum=0.9, weight_decay=1e-4)


def dropin_iteration(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
) -> torch.Tensor:
    """The unchanged training loop of ``DropInLFPOptimizer``: zero_grad, forward, loss, backward, step."""
    inputs, targets = batch
    optimizer.zero_grad()
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.detach()


# -- faults ---------------------------------------------------------------------------------------------
def _raise(exception: BaseException) -> Callable[..., None]:
    def hook(*args: Any) -> None:
        raise exception

    return hook


@contextmanager
def fault_before_forward(module: nn.Module, exception: BaseException) -> Iterator[None]:
    """``module`` raises when it is called, before its forward runs."""
    handle = module.register_forward_pre_hook(_raise(exception))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def fault_after_forward(module: nn.Module, exception: BaseException) -> Iterator[None]:
    """``module`` raises after its forward ran (a BatchNorm has updated its statistics by then)."""
    handle = module.register_forward_hook(_raise(exception))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def fault_in_backward(module: nn.Module, exception: BaseException) -> Iterator[list[bool]]:
    """The backward pass raises when it reaches ``module``'s output.

    Yields a one-element list that is ``[True]`` once the output required a gradient (armed).
    """
    armed = [False]

    def arm(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(_raise(exception))
            armed[0] = True

    handle = module.register_forward_hook(arm)
    try:
        yield armed
    finally:
        handle.remove()


MACHINERY = ("_set_grad_enabled", "_record_function", "__get__", "__set__")
"""Torch functions that are machinery rather than work, and that `FaultAtCall` lets pass.

Context managers (``no_grad``'s exit, profiler ranges) and tensor attribute access (``.shape``,
``.grad_fn``, autograd setting a ``Function``'s outputs) cannot fail in real life; raising at them
breaks PyTorch itself (``no_grad`` would not re-enable gradients; an attribute set inside
``Function.apply`` turns into a ``SystemError``)."""


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: on a loaded 2-core machine small models run several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class FaultAtCall(TorchFunctionMode):
    """Counts the torch functions called while it is active, and raises at call number ``fail_at``.

    Pushed *below* the LFP engine's own mode it sees every call the step makes: those of the
    rules inside the forward, the reward's, the seed's, the call into autograd. Calls to
    `MACHINERY` are not counted.
    """

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.calls = 0
        self.names: list[str] = []

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        name = getattr(func, "__name__", "")
        if not name.startswith(MACHINERY):
            self.calls += 1
            self.names.append(name)
            if self.calls == self.fail_at:
                raise InjectedFault(f"injected fault at torch call {self.calls} ({name})")
        return func(*args, **(kwargs or {}))


# -- a bit-exact snapshot ------------------------------------------------------------------------------
def _hook_dicts(owner: object) -> dict[str, tuple[Any, ...]]:
    return {
        name: tuple(value)
        for name, value in vars(owner).items()
        if "hook" in name and isinstance(value, (dict, set)) and name != "_is_full_backward_hook"
    }


def _global_module_hooks() -> dict[str, tuple[Any, ...]]:
    return {
        name: tuple(value)
        for name, value in vars(module_globals).items()
        if name.startswith("_global_") and isinstance(value, (dict, set))
    }


def _tensor_hooks(tensor: torch.Tensor) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    backward = tensor._backward_hooks
    post = tensor._post_accumulate_grad_hooks
    return tuple(backward or ()), tuple(post or ())


def _structure(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Everything but tensor values: which objects, flags, attributes and hooks there are."""
    named = dict(model.named_parameters())
    base = getattr(optimizer, "base", optimizer)
    return {
        "modules": [(name, id(module), type(module)) for name, module in model.named_modules()],
        "module attributes": {name: tuple(vars(module)) for name, module in model.named_modules()},
        "training flags": {name: module.training for name, module in model.named_modules()},
        "inplace flags": {name: m.inplace for name, m in model.named_modules() if hasattr(m, "inplace")},
        "module hooks": {name: _hook_dicts(module) for name, module in model.named_modules()},
        "global module hooks": _global_module_hooks(),
        "parameter objects": {name: id(p) for name, p in named.items()},
        "parameter attributes": {name: tuple(vars(p)) for name, p in named.items()},
        "parameter hooks": {name: _tensor_hooks(p) for name, p in named.items()},
        "requires_grad flags": {name: p.requires_grad for name, p in named.items()},
        ".grad objects": {name: None if p.grad is None else id(p.grad) for name, p in named.items()},
        "optimizer hooks": {**_hook_dicts(optimizer), **{f"base {k}": v for k, v in _hook_dicts(base).items()}},
        "torch-function mode stack": torch._C._len_torch_function_stack(),
        "grad mode": torch.is_grad_enabled(),
    }


@dataclass
class Snapshot:
    """Everything about a model and its optimizer that a failed step must leave as it was.

    Taken once (tensors cloned); `differences` compares the live model and optimizer with it
    without copying them again.
    """

    structure: dict[str, Any]
    params: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor | None]
    buffers: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]

    @classmethod
    def take(cls, model: nn.Module, optimizer: torch.optim.Optimizer) -> Snapshot:
        named = dict(model.named_parameters())
        return cls(
            structure=_structure(model, optimizer),
            params={name: p.detach().clone() for name, p in named.items()},
            grads={name: None if p.grad is None else p.grad.clone() for name, p in named.items()},
            buffers={name: b.detach().clone() for name, b in model.named_buffers()},
            optimizer_state=copy.deepcopy(optimizer.state_dict()),
        )

    def differences(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, buffers: bool = True, grads: bool = True
    ) -> list[str]:
        """What differs between this snapshot and the model and optimizer now, in words."""
        structure = _structure(model, optimizer)
        if not grads:
            del structure[".grad objects"]
        found = [f"{what} changed" for what, value in structure.items() if value != self.structure[what]]
        named = dict(model.named_parameters())
        found += [f"parameter {name} changed" for name, p in self.params.items() if not _same(p, named[name].detach())]
        if grads:
            found += [f".grad of {name} changed" for name, g in self.grads.items() if not _same(g, named[name].grad)]
        if buffers:
            now = dict(model.named_buffers())
            found += [f"buffer {name} changed" for name, b in self.buffers.items() if not _same(b, now[name])]
        if not same_state(self.optimizer_state, optimizer.state_dict()):
            found.append("optimizer state changed")
        return found


def same_state(a: Any, b: Any) -> bool:
    """Bit-exact equality of nested dicts, lists and tensors (a state dict)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and _same(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_state, a, b))
    return a == b


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def same_buffers(a: nn.Module, b: nn.Module) -> list[str]:
    """Names of the buffers that differ between two models of the same architecture."""
    theirs = dict(b.named_buffers())
    return [name for name, buffer in a.named_buffers() if not _same(buffer, theirs[name])]


def same_parameters(a: nn.Module, b: nn.Module) -> list[str]:
    """Names of the parameters that differ between two models of the same architecture."""
    theirs = dict(b.named_parameters())
    return [name for name, p in a.named_parameters() if not _same(p.detach(), theirs[name].detach())]
