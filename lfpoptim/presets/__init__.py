"""Rule presets: named rule maps per model family, chosen by model or by name, extensible by plugins.

``LFPOptimizer(model, reward, preset="auto")`` (the default) asks `select_preset` for the
model's preset: timm's architecture name first (``model.pretrained_cfg["architecture"]``), then
the module classes in the model (a Hugging Face causal language model's ``*ForCausalLM`` or
decoder blocks before attention), else ``"default"``. An explicit name overrides the
choice; `get_preset` raises `UnknownPresetError` listing the known names. Built in:
``default``, ``resnet``, ``vit``, ``llm``, ``regression`` and ``snn`` (`list_presets` names them all);
`register_preset` adds more, and other distributions add theirs through the entry-point group
``lfpoptim.presets``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..rules import CoverageCheck, DropoutMode, RuleMap
from . import default, llm, regression, resnet, snn, vit  # noqa: F401 (registers the built-in presets)
from .registry import (
    AUTO,
    ENTRY_POINT_GROUP,
    Preset,
    UnknownPresetError,
    get_preset,
    list_presets,
    register_preset,
    select_preset,
    timm_architecture,
)


@dataclass(frozen=True)
class ResolvedRules:
    """What a preset argument resolved to.

    Attributes:
        rules: the rule map, inside a `lfpoptim.rules.CoverageCheck`.
        preset: the preset it came from (``None`` for a user's own rule map).
        epsilon: the ε it was built with (``None`` for a user's own rule map).
    """

    rules: CoverageCheck
    preset: Preset | None
    epsilon: float | None


def resolve_preset(model: nn.Module, preset: str | Preset = AUTO) -> Preset:
    """``preset`` as a `Preset`: ``"auto"`` chooses by model, a name is looked up.

    Args:
        model: the network that ``"auto"`` chooses for (`select_preset`).
        preset: ``"auto"``, a preset name, or a `Preset` (returned as it is).

    Returns:
        the preset.

    Raises:
        TypeError: ``preset`` is neither a string nor a `Preset`.
        UnknownPresetError: no preset has that name.
    """
    if isinstance(preset, Preset):
        return preset
    if not isinstance(preset, str):
        raise TypeError(f"preset must be a preset name or a Preset, got {type(preset).__name__}")
    return select_preset(model) if preset == AUTO else get_preset(preset)


def resolve_rules(
    model: nn.Module,
    preset: str | Preset = AUTO,
    *,
    epsilon: float | None = None,
    dropout: DropoutMode = "reference",
    rules: RuleMap | None = None,
    strict: bool = False,
) -> ResolvedRules:
    """The rule map an optimizer uses: the preset's (or ``rules``), watched for uncovered operations.

    Args:
        model: the network (``preset="auto"`` looks at it).
        preset: a preset name, ``"auto"``, or a `Preset`.
        epsilon: ε for the preset; the preset's own when ``None``.
        dropout: how train-mode dropout treats reward.
        rules: a rule map of one's own instead of a preset (then ``preset`` must stay ``"auto"``
            and ``epsilon`` ``None``).
        strict: the check raises instead of warning once about operations without a rule.

    Returns:
        the checked rule map, with the preset and ε it came from.

    Raises:
        ValueError: ``epsilon`` is negative, or ``rules`` is given together with ``preset`` or ``epsilon``.
        TypeError: ``preset`` is neither a string nor a `Preset`.
        UnknownPresetError: no preset has that name.
    """
    if epsilon is not None and epsilon < 0:
        raise ValueError(f"epsilon must be non-negative, got {epsilon}")
    if rules is not None:
        if preset != AUTO or epsilon is not None:
            raise ValueError("pass either rules=... or preset=/epsilon=, not both: a rule map fixes its own ε")
        return ResolvedRules(CoverageCheck(rules, strict=strict, describe="the given rules"), None, None)
    chosen = resolve_preset(model, preset)
    resolved_epsilon = chosen.epsilon if epsilon is None else epsilon
    rule_map = chosen.rules(resolved_epsilon, dropout)
    return ResolvedRules(
        CoverageCheck(rule_map, strict=strict, describe=f"preset {chosen.name!r}"), chosen, resolved_epsilon
    )


__all__ = [
    "AUTO",
    "ENTRY_POINT_GROUP",
    "Preset",
    "ResolvedRules",
    "UnknownPresetError",
    "get_preset",
    "list_presets",
    "register_preset",
    "resolve_preset",
    "resolve_rules",
    "select_preset",
    "timm_architecture",
]
