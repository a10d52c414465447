r"""One LFP pass: forward under the rules, reward, one backward pass, raw feedback.

The engine runs LFP in its *gradient formulation*. Writing \(g_x = R_x / x\) for the reward
that reaches a tensor, epsilon-LFP is ordinary backpropagation of

\[
g_{\text{out}} = \frac{R_{\text{out}}}{\operatorname{stab}(y_{\text{out}})}
\]

once every rule has shaped its operation's backward (`lfpoptim.rules`). Afterwards
``theta.grad`` holds \(J_\theta^\top n\) summed over every use of \(\theta\), and the
feedback is \(F_\theta = |\theta| \odot J_\theta^\top n\).

The rules are attached by a `torch.overrides.TorchFunctionMode` that sees every torch
function the forward calls. Nothing is registered on the model: no module is swapped, no module
hook is left, no ``inplace`` flag is touched, and the only state the forward changes (buffers such
as BatchNorm's running statistics) is restored if anything fails before the feedback is returned.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .rules import CoverageCheck, FusionCell, RuleMap, is_inplace_call, stabilise, stabiliser_ratio
from .rules.base import OutputGradientHook, Rule, scalar
from .rules.modules import attached_module_rules

FeedbackReduction = Literal["grad_norm", "normalized", "mean", "sum"]
RewardFunction = Callable[[torch.Tensor, Any], torch.Tensor]


class _Stabilised:
    """The output z of an epsilon-rule operation, until the forward is over.

    z itself is held weakly: a BatchNorm output that only its ReLU reads is freed as soon as the
    ReLU has run, as without LFP. Its values are kept (as an alias, not a copy) only once a hook
    may need them, that is once something other than a single activation reads it.
    """

    __slots__ = ("cell", "consumers", "epsilon", "node", "output_nr", "tensor", "values")

    def __init__(self, output: torch.Tensor, epsilon: float) -> None:
        self.tensor = weakref.ref(output)
        self.values: torch.Tensor | None = None
        self.epsilon = epsilon
        self.node = output.grad_fn
        self.output_nr = output.output_nr
        self.consumers = 0
        self.cell: FusionCell | None = None

    def keep_values(self) -> None:
        """Keep z's values for a hook (call while z is alive)."""
        if self.values is None:
            tensor = self.tensor()
            if tensor is not None:
                self.values = tensor.detach()


class _StabiliserHook(OutputGradientHook):
    r"""Autograd node pre-hook: multiplies the gradient arriving at z by \(|z| / (|z| + \varepsilon)\).

    It holds z's values detached from the graph, so no reference cycle through the graph forms.
    """

    __slots__ = ("epsilon", "values")

    def __init__(self, values: torch.Tensor, epsilon: float, output_nr: int) -> None:
        super().__init__(output_nr)
        self.values = values
        self.epsilon = epsilon

    def scale(self, grad: torch.Tensor) -> torch.Tensor:
        r"""\(|z| / (|z| + \varepsilon)\) times ``grad``, in the ratio's buffer."""
        return stabiliser_ratio(self.values, self.epsilon).mul_(grad)


def _requires_grad(output: Any) -> bool:
    if isinstance(output, torch.Tensor):
        return output.requires_grad
    if isinstance(output, (list, tuple)):
        return any(isinstance(item, torch.Tensor) and item.requires_grad for item in output)
    return False


class ForwardTrace(TorchFunctionMode):
    """Attaches LFP rules to every torch function called during one forward.

    Epsilon-rule outputs are tracked until the forward ends; `finalize` then decides for
    each one whether the single activation reading it applies its stabiliser (fused) or a hook on
    its autograd node does. Use it as a context manager around exactly one forward.

    Args:
        rules: which rule each torch function gets; functions without one run unchanged.
        model: the network, whose modules matched by a `lfpoptim.rules.ModuleClass` key of
            ``rules`` call their forward through that key's rule while the trace is active.

    Attributes:
        rules (RuleMap): the rule map the trace dispatches on.
        model (nn.Module | None): the network whose module rules the trace attaches.
    """

    def __init__(self, rules: RuleMap, model: nn.Module | None = None) -> None:
        super().__init__()
        self.rules = rules
        self.model = model
        self._by_id: dict[int, _Stabilised] = {}
        self._records: list[_Stabilised] = []
        self._last_activation: tuple[torch.Tensor, torch.Tensor] | None = None
        self._module_rules: AbstractContextManager[None] | None = None

    def __enter__(self) -> ForwardTrace:
        if self.model is not None:
            self._module_rules = attached_module_rules(self.model, self.rules, self)
            self._module_rules.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self._detach_module_rules()
            raise

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            self._detach_module_rules()

    def _detach_module_rules(self) -> None:
        attached, self._module_rules = self._module_rules, None
        if attached is not None:
            attached.__exit__(None, None, None)

    def call_module(
        self, rule: Rule, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Implements `lfpoptim.rules.base.Trace.call_module`; the functions inside the forward are not traced."""
        with torch._C.DisableTorchFunction():
            return rule(self, forward, args, kwargs)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        rule = self.rules.get(func)
        if rule is not None:
            return rule(self, func, args, kwargs)
        if not self._by_id:
            return func(*args, **kwargs)
        inplace = is_inplace_call(func, kwargs)
        read = self._read(args, kwargs)
        if not read:
            return func(*args, **kwargs)
        if inplace:
            read[0].keep_values()
            self._release(args[0], snapshot=True)
        output = func(*args, **kwargs)
        if _requires_grad(output) and not any(output is arg for arg in args):
            for record in read:
                record.consumers += 1
                record.keep_values()
        return output

    def _read(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[_Stabilised]:
        """The tracked tensors among the call's arguments (and in lists of them, as for ``torch.cat``)."""
        found = []
        by_id = self._by_id
        for arg in (*args, *kwargs.values()) if kwargs else args:
            items = arg if isinstance(arg, (list, tuple)) else (arg,)
            for item in items:
                if isinstance(item, torch.Tensor):
                    record = by_id.get(id(item))
                    if record is not None and record.tensor() is item:
                        found.append(record)
        return found

    def _release(self, tensor: Any, snapshot: bool) -> None:
        """``tensor`` is about to be overwritten in place: its record keeps a copy, or forgets it."""
        record = self._by_id.pop(id(tensor), None)
        if record is not None and snapshot and record.values is not None:
            record.values = record.values.clone()

    @staticmethod
    def active() -> bool:
        """Whether a forward trace is active in this thread (a forward inside an LFP pass)."""
        stack = range(torch._C._len_torch_function_stack())
        return any(isinstance(torch._C._get_function_stack_at(level), ForwardTrace) for level in stack)

    # -- the Trace protocol used by the rules -------------------------------------------------
    def consume(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], inplace: bool) -> None:
        """Record that an operation without fusion read the tracked tensors among its arguments.

        Implements `lfpoptim.rules.base.Trace.consume`: each tracked tensor read gains a consumer and
        keeps its values for a hook; a tensor overwritten in place is snapshotted and no longer tracked.

        Args:
            args: the call's positional arguments.
            kwargs: the call's keyword arguments.
            inplace: whether the call writes into its first argument.
        """
        if not self._by_id:
            return
        read = self._read(args, kwargs)
        for record in read:
            record.consumers += 1
            record.keep_values()
        if inplace and read:
            self._release(args[0], snapshot=True)

    def mark_stabilised(self, output: torch.Tensor, epsilon: float) -> None:
        """Track ``output`` as the output z of an epsilon-rule operation until `finalize`.

        Implements `lfpoptim.rules.base.Trace.mark_stabilised`.

        Args:
            output: the operation's result.
            epsilon: the ε its stabiliser uses.
        """
        record = _Stabilised(output, epsilon)
        self._records.append(record)
        self._by_id[id(output)] = record

    def fuse_activation(self, z: torch.Tensor, inplace: bool) -> FusionCell:
        """Record that an activation reads ``z``; return the cell that says if it applies z's stabiliser.

        Implements `lfpoptim.rules.base.Trace.fuse_activation`. An untracked ``z`` gets a fresh cell that
        `finalize` never fuses; a tracked one read before keeps its values, as it needs its hook after all.

        Args:
            z: the activation's input.
            inplace: whether the activation writes into ``z``.

        Returns:
            the cell `finalize` fills in: fused when this activation is z's only reader.
        """
        record = self._by_id.get(id(z))
        if record is None or record.tensor() is not z:
            return FusionCell()
        if record.consumers > 0:  # a second reader: z needs its hook after all
            record.keep_values()
        if inplace:
            self._release(z, snapshot=record.consumers > 0)
        record.consumers += 1
        cell = FusionCell(epsilon=record.epsilon)
        if record.cell is None:
            record.cell = cell
        return cell

    def record_activation(self, output: torch.Tensor, z: torch.Tensor) -> None:
        """Remember that ``output`` is an activation of ``z``, for the seeded start in `finalize`.

        Implements `lfpoptim.rules.base.Trace.record_activation`; only the latest activation is kept.

        Args:
            output: the activation's result.
            z: its input.
        """
        self._last_activation = (output, z)

    # -- after the forward ----------------------------------------------------------------------
    def finalize(self, output: torch.Tensor, seeded: bool = True) -> tuple[torch.Tensor, float | None]:
        """Fuse or hook every tracked tensor; return where the backward pass starts, and its ε.

        With ``seeded`` (the explicit LFP step) the backward pass starts at the model's output,
        or, when the output is an activation's, at that activation's input: the identity rule
        hands it the output's reward unchanged, also where the activation is 0 (a silent ReLU
        or step unit), which a seed divided by the output could not carry. That start is not
        hooked: the seed divides by its stabiliser already, and doing it twice would shift the
        result by O(ε). The returned ε is ``None`` when the start is no epsilon-rule output.

        Without ``seeded`` (drop-in mode, where a loss's gradient arrives at the output) the
        output's stabiliser is applied by a hook like any other.

        Args:
            output: the model's output tensor.
            seeded: whether the backward pass is seeded by the LFP step (``True``) or driven by a
                loss's gradient (``False``, drop-in mode).

        Returns:
            the tensor the backward pass starts at, and its ε (``None`` when it is no epsilon-rule output).
        """
        if isinstance(self.rules, CoverageCheck):  # operations the output does not depend on are off the path
            self.rules.forget_after(output)
        start = output
        if seeded and self._last_activation is not None and self._last_activation[0] is output:
            start = self._last_activation[1]
        start_epsilon = None
        for record in self._records:
            is_start = record.tensor() is start
            if is_start:
                start_epsilon = record.epsilon
                if seeded:
                    continue
            if record.cell is not None and record.consumers == 1 and not is_start:
                record.cell.fused = True
            elif record.consumers > 0 or is_start:
                if is_start:
                    record.keep_values()
                record.node.register_prehook(_StabiliserHook(record.values, record.epsilon, record.output_nr))
        self.clear()
        return start, start_epsilon

    def clear(self) -> None:
        """Forget every tracked tensor."""
        self._by_id.clear()
        self._records.clear()
        self._last_activation = None


@dataclass
class LFPPass:
    r"""What one LFP pass computed.

    Attributes:
        outputs: the model's outputs, detached.
        reward: the reward at the outputs (shaped like them).
        grads: \(J_\theta^\top n\) per parameter, in the order asked for; the feedback is
            ``params[i].abs() * grads[i]``. Zeros where no reward reached a parameter.
        input_reward: the reward that arrived at the inputs, when asked for.
        saved_buffers: the model's buffers with their values from before the pass, for
            `restore_buffers`.
    """

    outputs: torch.Tensor
    reward: torch.Tensor
    grads: list[torch.Tensor]
    input_reward: torch.Tensor | None = field(default=None)
    saved_buffers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)

    def restore_buffers(self) -> None:
        """Put the buffers the forward changed (BatchNorm's running statistics) back as they were before the pass."""
        _restore(self.saved_buffers)


def _restore(saved_buffers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for buffer, saved in saved_buffers:
            buffer.copy_(saved)


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a Mapping of keyword arguments (a tokenizer's batch), else ``model(inputs)``.

    Args:
        model: the network.
        inputs: the batch.

    Returns:
        what the model returns.
    """
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def output_tensor(outputs: Any) -> Any:
    """The tensor the reward is computed on: ``outputs`` itself, or its ``.logits`` (a Hugging Face ``ModelOutput``).

    Any other structure is returned as it is, for `check_outputs` to refuse: a model returning
    something else is wrapped in a module whose ``forward`` returns the tensor to reward.

    Args:
        outputs: what the model returned.

    Returns:
        the tensor to reward (or ``outputs`` unchanged when it has none).
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else outputs


def check_outputs(outputs: Any, batch_dim: int | None) -> None:
    """Raise a clear error unless ``outputs`` is one non-empty tensor, with a ``batch_dim`` if one is given.

    Args:
        outputs: what the model returned.
        batch_dim: the batch dimension the outputs must have, or ``None`` to not check for one.

    Raises:
        TypeError: ``outputs`` is not a tensor.
        ValueError: ``outputs`` has no dimension ``batch_dim``, or is empty.
    """
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(
            f"the model returned {type(outputs).__name__}; LFP needs a single output tensor, or an output with a "
            "`.logits` tensor (a Hugging Face ModelOutput): wrap the model in a module whose forward returns the "
            "tensor the reward is computed on"
        )
    if batch_dim is not None and outputs.dim() <= batch_dim:
        raise ValueError(
            f"the model's outputs have shape {tuple(outputs.shape)}, without the batch dimension {batch_dim} that "
            'every feedback_reduction but "sum" averages over; return outputs per sample (or use "sum")'
        )
    if outputs.numel() == 0:
        raise ValueError(
            f"the model's outputs are empty (shape {tuple(outputs.shape)}): the batch is empty, or the model "
            "outputs nothing; there is no reward to propagate"
        )


def check_reward(reward: Any, outputs: torch.Tensor) -> torch.Tensor:
    """Raise a clear error unless ``reward`` is a finite real tensor shaped like ``outputs`` (finite too).

    Args:
        reward: what ``reward_fn`` returned.
        outputs: the model's outputs.

    Returns:
        ``reward`` on the device and in the dtype of ``outputs``.

    Raises:
        TypeError: ``reward`` is not a tensor, or is complex.
        ValueError: ``reward`` is shaped unlike ``outputs``, or ``reward`` or ``outputs`` hold NaN or Inf.
    """
    if not isinstance(reward, torch.Tensor):
        raise TypeError(f"reward_fn must return a torch.Tensor shaped like the outputs, got {type(reward).__name__}")
    if reward.is_complex():
        raise TypeError(f"reward_fn returned a complex tensor ({reward.dtype}); the reward must be real")
    if reward.shape != outputs.shape:
        raise ValueError(
            f"reward has shape {tuple(reward.shape)} but outputs have shape {tuple(outputs.shape)}: "
            "the reward must give one value per output unit"
        )
    reward = reward.to(device=outputs.device, dtype=outputs.dtype)  # the same tensor when both already match
    # one reduction tests both: a NaN or an Inf in either makes sum(reward * outputs) NaN or Inf
    # (0 * Inf is NaN). The outputs need the test too, as a reward such as sign(outputs) can be
    # finite where they are not. A finite sum that overflows only leads to the counts below.
    if not math.isfinite(float(torch.dot(reward.reshape(-1), outputs.reshape(-1)))):
        bad = int((~torch.isfinite(outputs)).sum())
        if bad:
            raise ValueError(
                f"the model's outputs contain NaN or Inf ({bad} of {outputs.numel()} entries); "
                "check the inputs and the model's parameters"
            )
        bad = int((~torch.isfinite(reward)).sum())
        if bad:
            raise ValueError(
                f"reward contains NaN or Inf ({bad} of {reward.numel()} entries); "
                "check the model's outputs and the targets"
            )
    return reward


def _seed(start: torch.Tensor, reward: torch.Tensor, start_epsilon: float | None, batch: int) -> torch.Tensor:
    r"""The gradient that starts the backward pass: \(R / (\operatorname{stab}(y) \cdot b)\).

    \(R / (y \cdot b)\) if the output is not an epsilon-rule output (and \(R / b\) where
    \(y = 0\)). ``b`` is the batch size for a mean over the batch, 1 for a sum.
    """
    denominator = stabilise(start, start_epsilon) if start_epsilon is not None else torch.where(start == 0, 1.0, start)
    seed = torch.div(reward, denominator)
    return seed.div_(scalar(batch, seed)) if batch != 1 else seed


def lfp_pass(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    reward_fn: RewardFunction,
    params: Sequence[torch.Tensor],
    *,
    rules: RuleMap,
    reduction: FeedbackReduction = "mean",
    with_input_reward: bool = False,
    batch_dim: int = 0,
) -> LFPPass:
    """Run one LFP pass and return the raw per-parameter feedback factors.

    The model is left exactly as it was if anything raises: buffers changed by the forward (such
    as BatchNorm's running statistics) are restored, and no hook outlives the pass. Parameters
    and their ``.grad`` are never touched. The pass enables gradients for itself, so it also
    runs under ``torch.no_grad()`` (not under ``torch.inference_mode()``, which rules out any
    backward pass).

    Args:
        model: the network; called as ``model(**inputs)`` when ``inputs`` is a Mapping (Hugging Face
            keyword inputs such as ``{"input_ids": ..., "attention_mask": ...}``), else ``model(inputs)``.
            Its output is a tensor, or has a ``.logits`` tensor (a ``ModelOutput``), which is rewarded.
        inputs: the batch.
        targets: passed to ``reward_fn`` as is.
        reward_fn: ``reward_fn(outputs, targets)`` returns the reward, shaped like the outputs.
        params: the parameters to compute feedback for.
        rules: which rule each torch function gets.
        reduction: ``"sum"`` sums feedback over the batch (as the reference does); the others
            divide it by the batch size (their per-tensor scaling is applied later, by
            `lfpoptim.functional.weight_scale_`).
        with_input_reward: also return the reward that reaches ``inputs`` (a tensor).
        batch_dim: the batch dimension of the outputs, which every reduction but ``"sum"``
            averages over (1 for time-major outputs such as a spiking network's (T, B, C)).
    """
    if not torch.is_grad_enabled():  # the pass's own backward, also when called under torch.no_grad()
        with torch.enable_grad():
            return lfp_pass(
                model,
                inputs,
                targets,
                reward_fn,
                params,
                rules=rules,
                reduction=reduction,
                with_input_reward=with_input_reward,
                batch_dim=batch_dim,
            )
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "an LFP pass needs autograd for its backward pass, which torch.inference_mode() disables; "
            "call it outside inference_mode (under torch.no_grad() it works: it enables gradients for itself)"
        )
    saved_buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        if with_input_reward:
            if not isinstance(inputs, torch.Tensor):
                raise TypeError(f"the input reward needs the inputs as one tensor, got {type(inputs).__name__}")
            inputs = inputs.detach().requires_grad_(True)
        trace = ForwardTrace(rules, model)
        try:
            with trace:
                outputs = output_tensor(call_model(model, inputs))
            check_outputs(outputs, None if reduction == "sum" else batch_dim)
            start, start_epsilon = trace.finalize(outputs)
        finally:
            trace.clear()
        with torch.no_grad():
            detached = outputs.detach()
            version = detached._version
            reward = reward_fn(detached, targets)
            if detached._version != version:
                raise ValueError(
                    "reward_fn modified the model's outputs in place, which would change the backward pass's "
                    "seed; compute the reward without writing into its outputs argument (clone it first)"
                )
            reward = check_reward(reward, outputs)
            batch = 1 if reduction == "sum" else outputs.shape[batch_dim]
            seed = _seed(start.detach(), reward, start_epsilon, batch)
        wrt = [*params, inputs] if with_input_reward else list(params)
        grads = list(torch.autograd.grad(start, wrt, seed, allow_unused=True, materialize_grads=True))
        input_reward = None
        if with_input_reward:
            input_reward = (grads.pop() * inputs).detach()
        return LFPPass(detached, reward, grads, input_reward, saved_buffers)
    except BaseException:
        _restore(saved_buffers)
        raise
