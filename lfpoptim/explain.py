"""Which rule each operation of a model gets: ``lfpoptim.explain(model, example_inputs)``.

`explain` runs one forward of the model under a preset's rules, as an LFP step would, and records
every operation on the reward's path (every torch function that reads a tensor requiring a
gradient and produces one) with the module that called it and the rule it got. Operations
without a rule either move reward as a gradient would by design (reshapes, indexing,
concatenation, max pooling: `lfpoptim.rules.GRADIENT_OPERATIONS`) or are *uncovered*; an
optimizer built with ``strict=True`` refuses to train a model with uncovered operations.

The model is left as it was: module hooks are removed, buffers (BatchNorm statistics) and the
random number generator's state are restored, and no backward pass runs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .engine import ForwardTrace, call_model
from .presets import AUTO, Preset, resolve_preset
from .rules import DropoutMode, Rule, RuleMap, TorchFunction, operation_name, passes_reward
from .rules.coverage import output_requires_grad, reads_gradient_tensors

GRADIENT_RULE = "gradient"
"""How the table names the treatment of operations that move reward as a gradient would."""

UNCOVERED = "none (uncovered)"
"""How the table names an operation without a rule."""


@dataclass(frozen=True)
class OperationRecord:
    """One operation on the reward's path.

    Attributes:
        module: qualified name of the innermost module that called it (``"layer1.0.conv1"``;
            ``""`` for the model itself).
        module_type: that module's class name.
        operation: the torch function (``"conv2d"``, ``"Tensor.mul"``).
        rule: the rule it got, with its parameters (``"epsilon(ε=1e-06)"``), `GRADIENT_RULE`
            or `UNCOVERED`.
        count: how many times in a row the module called it with the same rule.
    """

    module: str
    module_type: str
    operation: str
    rule: str
    count: int = 1

    @property
    def covered(self) -> bool:
        """Whether the operation has a rule or moves reward by design."""
        return self.rule != UNCOVERED


@dataclass(frozen=True)
class Explanation:
    """What `explain` found; ``str()`` of it is the table.

    Attributes:
        model: the model's class name, and timm architecture if it has one.
        preset: the preset's name (``None`` for a rule map of one's own).
        epsilon: the ε the preset was built with.
        operations: every operation on the reward's path, in forward order (consecutive repeats
            merged).
    """

    model: str
    preset: str | None
    epsilon: float | None
    operations: tuple[OperationRecord, ...]

    @property
    def uncovered(self) -> list[OperationRecord]:
        """The operations that got no rule."""
        return [record for record in self.operations if not record.covered]

    def rule_counts(self) -> dict[str, int]:
        """How many operations got each rule (its name without parameters), most frequent first."""
        counts: Counter[str] = Counter()
        for record in self.operations:
            counts[re.sub(r"\(ε=[^)]*\)", "", record.rule)] += record.count
        return dict(counts.most_common())

    def table(self) -> str:
        """The operations as an aligned text table, followed by a summary."""
        header = ("module", "type", "operation", "rule")
        rows = [
            (
                record.module or "(model)",
                record.module_type,
                record.operation + (f" x{record.count}" if record.count > 1 else ""),
                record.rule,
            )
            for record in self.operations
        ]
        widths = [max(len(row[column]) for row in [header, *rows]) for column in range(3)]
        lines = [
            "  ".join([*(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)), row[3]]).rstrip()
            for row in [header, tuple("-" * len(cell) for cell in header), *rows]
        ]
        preset = f"preset {self.preset!r}" if self.preset else "a rule map of one's own"
        epsilon = f", ε = {self.epsilon:g}" if self.epsilon is not None else ""
        total = sum(record.count for record in self.operations)
        counts = ", ".join(f"{name} {count}" for name, count in self.rule_counts().items())
        uncovered = self.uncovered
        lines += [
            "",
            f"{self.model} under {preset}{epsilon}: {total} operations on the reward's path ({counts})",
            "uncovered operations: "
            + (", ".join(f"{r.operation} in {r.module or '(model)'}" for r in uncovered) if uncovered else "none"),
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def describe_rule(rule: Rule, func: TorchFunction, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """A rule's name for the table, with its ε, or what it does for this very call.

    Args:
        rule: the rule the call gets.
        func: the torch function called.
        args: its positional arguments.
        kwargs: its keyword arguments.

    Returns:
        the rule's own ``describe(func, args, kwargs)`` if it has one, else its ``name`` with its
        ε or ``mode``.
    """
    describe: Callable[..., str] | None = getattr(rule, "describe", None)
    if describe is not None:
        return describe(func, args, dict(kwargs))
    name = getattr(rule, "name", type(rule).__name__)
    epsilon = getattr(rule, "epsilon", None)
    if epsilon is not None:
        return f"{name}(ε={epsilon:g})"
    mode = getattr(rule, "mode", None)
    return f"{name} ({mode})" if mode is not None else name


class _RecordingTrace(ForwardTrace):
    """The engine's forward trace, noting each operation on the reward's path and its rule."""

    def __init__(self, rules: RuleMap, module_stack: list[tuple[str, str]], model: nn.Module) -> None:
        super().__init__(rules, model)
        self.module_stack = module_stack
        self.records: list[OperationRecord] = []

    def call_module(self, rule: Rule, forward: TorchFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a module under its module rule (one operation, named ``forward``) and note it."""
        output = super().call_module(rule, forward, args, kwargs)
        if reads_gradient_tensors(args, kwargs) and output_requires_grad(output):
            self._add("forward", describe_rule(rule, forward, args, kwargs))
        return output

    def __torch_function__(
        self,
        func: TorchFunction,
        types: Sequence[type],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        on_path = reads_gradient_tensors(args, kwargs)
        rule = self.rules.get(func)
        if not on_path:
            label = ""
        elif rule is not None:
            label = describe_rule(rule, func, args, kwargs)
        else:
            label = GRADIENT_RULE if passes_reward(func) else UNCOVERED
        output = super().__torch_function__(func, types, args, kwargs)
        if on_path and output_requires_grad(output):
            self._add(operation_name(func), label)
        return output

    def _add(self, operation: str, rule: str) -> None:
        module, module_type = self.module_stack[-1]
        last = self.records[-1] if self.records else None
        if last is not None and (last.module, last.operation, last.rule) == (module, operation, rule):
            self.records[-1] = OperationRecord(module, module_type, operation, rule, last.count + 1)
        else:
            self.records.append(OperationRecord(module, module_type, operation, rule))


def _track_modules(model: nn.Module, stack: list[tuple[str, str]]) -> list[RemovableHandle]:
    handles = []
    for name, module in model.named_modules():
        if module is model:  # the model's own entry is at the bottom of the stack already
            continue
        entry = (name, type(module).__name__)

        def enter(module: nn.Module, args: Any, entry: tuple[str, str] = entry) -> None:
            stack.append(entry)

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            stack.pop()

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    return handles


def explain(
    model: nn.Module,
    example_inputs: Any,
    preset: str | Preset = AUTO,
    *,
    epsilon: float | None = None,
    dropout: DropoutMode = "reference",
    rules: RuleMap | None = None,
) -> Explanation:
    """The rule each operation of ``model`` gets on ``example_inputs``, and the operations that get none.

    Args:
        model: the network, in the mode (``train()``/``eval()``) it will be trained or explained in.
        example_inputs: a batch, passed as ``model(example_inputs)`` (``model(**example_inputs)``
            for a Mapping of keyword arguments, as a Hugging Face tokenizer returns).
        preset: a preset name, ``"auto"`` (the optimizers' default) or a `lfpoptim.presets.Preset`.
        epsilon: ε for the preset; the preset's own when ``None``.
        dropout: how train-mode dropout treats reward.
        rules: a rule map of one's own instead of a preset.

    Returns:
        the table of operations (print it), with `Explanation.uncovered` listing those without a rule.

    Example:
        >>> print(lfpoptim.explain(timm.create_model("resnet18"), torch.randn(1, 3, 224, 224)))
    """
    if rules is not None:
        if preset != AUTO or epsilon is not None:
            raise ValueError("pass either rules=... or preset=/epsilon=, not both")
        chosen, rule_map, resolved_epsilon = None, rules, None
    else:
        chosen = resolve_preset(model, preset)
        resolved_epsilon = chosen.epsilon if epsilon is None else epsilon
        rule_map = chosen.rules(resolved_epsilon, dropout)
    stack: list[tuple[str, str]] = [("", type(model).__name__)]
    trace = _RecordingTrace(rule_map, stack, model)
    buffers = list(model.buffers())
    saved = [buffer.detach().clone() for buffer in buffers]
    handles = _track_modules(model, stack)
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), trace:
            call_model(model, example_inputs)
    finally:
        trace.clear()
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)
    architecture = getattr(model, "pretrained_cfg", None) or {}
    name = type(model).__name__
    if isinstance(architecture, Mapping) and architecture.get("architecture"):
        name = f"{architecture['architecture']} ({name})"
    return Explanation(
        model=name, preset=chosen.name if chosen else None, epsilon=resolved_epsilon, operations=tuple(trace.records)
    )
