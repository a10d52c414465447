r"""Rules for whole modules: an element-wise activation written as several torch functions.

Most activations are one torch function (``F.gelu``, ``F.silu``) and get the identity rule
there. Some are written out: Hugging Face's ``NewGELUActivation`` (GPT-2's ``gelu_new``) computes
\(\tfrac12 x (1 + \tanh(\sqrt{2/\pi}(x + 0.044715 x^3)))\) from six functions, whose rules
(a product of two signals among them) would not add up to the identity rule the activation as a
whole should get. A rule map key `ModuleClass` names such a module class; while a forward trace
runs, every module of that class calls its forward through the rule, as one operation: with
`lfpoptim.rules.IdentityActivationRule`, \(R_x = R_y\), that is
\(g_x = \frac{\varphi(x)}{x}\, g_y\) in the gradient formulation (lxt's
``identity_rule_implicit``, which lxt wraps around GPT-2's activation module for the same reason).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from .base import Rule, Trace


@dataclass(frozen=True)
class ModuleClass:
    """A rule-map key: every module whose class name matches ``pattern`` (``fnmatch``) gets the rule.

    Matched by name, so that a preset for Hugging Face models needs no ``transformers`` import.

    Attributes:
        pattern: an ``fnmatch`` pattern of module class names (``"NewGELUActivation"``).
    """

    pattern: str

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module``'s class name matches the pattern.

        Args:
            module: any module.

        Returns:
            whether its class name matches.
        """
        return fnmatch.fnmatchcase(type(module).__name__, self.pattern)


class _RuledForward:
    """A module's forward, called through a rule inside a forward trace."""

    __slots__ = ("forward", "rule", "trace")

    def __init__(self, trace: Trace, rule: Rule, forward: Any) -> None:
        self.trace, self.rule, self.forward = trace, rule, forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.trace.call_module(self.rule, self.forward, args, kwargs)


def module_rules(rules: Mapping[Any, Rule]) -> list[tuple[ModuleClass, Rule]]:
    """The `ModuleClass` keys of a rule map, with their rules.

    Args:
        rules: a rule map.

    Returns:
        ``(key, rule)`` for every `ModuleClass` key.
    """
    return [(key, rule) for key, rule in rules.items() if isinstance(key, ModuleClass)]


@contextmanager
def attached_module_rules(model: nn.Module, rules: Mapping[Any, Rule], trace: Trace) -> Iterator[None]:
    """Route the forward of every module that a `ModuleClass` key matches through its rule, for one block.

    The forward is replaced by an instance attribute for the block only; a forward the module had
    as an instance attribute already is put back afterwards, however the block ends.

    Args:
        model: the network.
        rules: the rule map.
        trace: the forward trace the rules run in.
    """
    keyed = module_rules(rules)
    patched: list[tuple[nn.Module, Any]] = []
    try:
        if keyed:
            for module in model.modules():
                rule = next((rule for key, rule in keyed if key.matches(module)), None)
                if rule is not None:
                    patched.append((module, vars(module).get("forward")))
                    module.forward = _RuledForward(trace, rule, module.forward)
        yield
    finally:
        for module, own_forward in reversed(patched):
            if own_forward is None:
                del module.forward
            else:
                module.forward = own_forward
