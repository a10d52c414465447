"""The preset registry: ``register_preset`` / ``get_preset`` / ``list_presets``, plus entry points.

A preset is a named recipe for a rule map: which rule each operation of a model family gets, and
with which ε. Presets are registered in the spirit of timm's ``register_model``:

```python
@register_preset("my_family", epsilon=1e-6, architectures=("my_net_*",))
def my_family(epsilon: float, dropout: DropoutMode) -> RuleMap:
    \"\"\"One line that `list_presets` and `lfpoptim explain` show.\"\"\"
    rules = default_rules(epsilon, dropout)
    rules[my_op] = MyRule(epsilon)
    return rules
```

Other distributions make their presets known through the entry-point group ``lfpoptim.presets``
(in their ``pyproject.toml``: ``[project.entry-points."lfpoptim.presets"] my_family =
"my_package.presets:my_family"``). Entry points are read only when a name is not found among the
presets registered so far, or when every preset is needed (`list_presets`, ``preset="auto"``),
and a preset's module is imported only then: installing a plugin costs nothing at
``import lfpoptim``. The object an entry point names may be a `Preset`, a function decorated
with `register_preset`, a plain rule-map function (registered under the entry point's name with
the defaults), or a module that registers its presets when imported.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from torch import nn

from ..rules import DropoutMode, Rule, RuleMap, TorchFunction

ENTRY_POINT_GROUP = "lfpoptim.presets"
"""The entry-point group through which other distributions register presets."""

AUTO = "auto"
"""The preset name that asks for a choice by model (`select_preset`)."""

FALLBACK = "default"
"""The preset ``"auto"`` chooses when no other preset matches the model."""

RuleMapBuilder = Callable[..., Mapping[TorchFunction, Rule]]
"""``build(epsilon=..., dropout=...)`` returns a rule map."""


class UnknownPresetError(ValueError):
    """No preset has the asked-for name; the message lists the known ones."""


@dataclass(frozen=True)
class Preset:
    """A registered preset: how to build its rule map, and which models it is meant for.

    Attributes:
        name: the name `get_preset` and ``LFPOptimizer(preset=...)`` take.
        build: ``build(epsilon=..., dropout=...)`` returns the rule map.
        epsilon: the preset's ε when the user gives none.
        description: one line for `list_presets` tables and `lfpoptim.explain`.
        architectures: ``fnmatch`` patterns of timm architecture names (``"vit_*"``) that
            ``preset="auto"`` maps to this preset.
        module_types: ``fnmatch`` patterns of module class names (``"*Attention"``): ``"auto"``
            picks this preset for a model containing such a module, when no architecture matched.
        priority: breaks ties when several presets match a model (highest wins).
        origin: the module that registered the preset.
    """

    name: str
    build: RuleMapBuilder = field(repr=False)
    epsilon: float = 1e-6
    description: str = ""
    architectures: tuple[str, ...] = ()
    module_types: tuple[str, ...] = ()
    priority: int = 0
    origin: str = ""

    def rules(self, epsilon: float | None = None, dropout: DropoutMode = "reference") -> RuleMap:
        """The rule map, with ``epsilon`` (the preset's own when ``None``).

        Args:
            epsilon: ε for the rules; the preset's own when ``None``.
            dropout: how train-mode dropout treats reward.

        Returns:
            a new rule map (a `dict`), which the caller may change.
        """
        return dict(self.build(epsilon=self.epsilon if epsilon is None else epsilon, dropout=dropout))

    def matches_architecture(self, architecture: str) -> bool:
        """Whether a timm architecture name is one of this preset's.

        Args:
            architecture: a timm architecture name (``"resnet18"``).

        Returns:
            whether it matches one of the ``architectures`` patterns.
        """
        return any(fnmatch.fnmatchcase(architecture, pattern) for pattern in self.architectures)

    def matches_modules(self, class_names: Iterable[str]) -> bool:
        """Whether any of these module class names is one of this preset's ``module_types``.

        Args:
            class_names: class names of a model's modules (``"Attention"``).

        Returns:
            whether any of them matches one of the ``module_types`` patterns.
        """
        names = set(class_names)
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.module_types for name in names)


_PRESETS: dict[str, Preset] = {}
_entry_points: dict[str, EntryPoint] | None = None


def register_preset(
    name: str,
    *,
    epsilon: float = 1e-6,
    architectures: Iterable[str] = (),
    module_types: Iterable[str] = (),
    priority: int = 0,
    description: str | None = None,
) -> Callable[[RuleMapBuilder], RuleMapBuilder]:
    """Decorator: register a rule-map function as the preset ``name``; the function is returned unchanged.

    Args:
        name: the preset's name; registering a name twice with a different function is an error.
        epsilon: the preset's default ε.
        architectures: timm architecture name patterns that ``preset="auto"`` maps to it.
        module_types: module class name patterns that make ``"auto"`` choose it.
        priority: breaks ties between matching presets (highest wins).
        description: one line; the function docstring's first line when ``None``.

    Returns:
        the decorator, which registers the function it is given and returns it unchanged.

    Raises:
        ValueError: ``name`` is empty or ``"auto"``, ``epsilon`` is negative, or (when decorating)
            another function is already registered under ``name``.
    """
    if not name or name == AUTO:
        raise ValueError(f"a preset cannot be called {name!r}")
    if epsilon < 0:
        raise ValueError(f"epsilon must be non-negative, got {epsilon}")

    def register(build: RuleMapBuilder) -> RuleMapBuilder:
        summary = description if description is not None else (inspect.getdoc(build) or "").split("\n", 1)[0]
        preset = Preset(
            name=name,
            build=build,
            epsilon=epsilon,
            description=summary,
            architectures=tuple(architectures),
            module_types=tuple(module_types),
            priority=priority,
            origin=getattr(build, "__module__", ""),
        )
        _add(preset)
        return build

    return register


def _add(preset: Preset) -> None:
    known = _PRESETS.get(preset.name)
    if known is not None and known.build is not preset.build:
        raise ValueError(f"a preset named {preset.name!r} is already registered (by {known.origin or 'unknown'})")
    _PRESETS[preset.name] = preset


def _discovered() -> dict[str, EntryPoint]:
    global _entry_points  # noqa: PLW0603 (read once per process, like timm's plugin discovery)
    if _entry_points is None:
        _entry_points = {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}
    return _entry_points


def _load_entry_point(name: str) -> Preset | None:
    point = _discovered().get(name)
    if point is None:
        return None
    loaded: Any = point.load()
    if isinstance(loaded, Preset):
        _add(loaded)
    elif name not in _PRESETS and callable(loaded):
        register_preset(name)(loaded)
    if name not in _PRESETS:
        raise ValueError(
            f"the entry point {point.value!r} of group {ENTRY_POINT_GROUP!r} did not register a preset named {name!r}"
        )
    return _PRESETS[name]


def list_presets(pattern: str = "*") -> list[str]:
    """The names of the known presets matching an ``fnmatch`` pattern, sorted.

    Presets of installed plugins are listed by their entry-point names without being imported.

    Args:
        pattern: an ``fnmatch`` pattern of preset names (``"*"``: all).

    Returns:
        the matching names, sorted.
    """
    names = set(_PRESETS) | set(_discovered())
    return sorted(name for name in names if fnmatch.fnmatchcase(name, pattern))


def get_preset(name: str) -> Preset:
    """The preset called ``name``, loading it from an entry point if it is not registered yet.

    Args:
        name: the preset's name.

    Returns:
        the preset.

    Raises:
        UnknownPresetError: no preset has that name; the message lists the known ones.
        ValueError: the entry point of that name does not register a preset called ``name``.
    """
    preset = _PRESETS.get(name) or _load_entry_point(name)
    if preset is None:
        known = ", ".join(list_presets())
        raise UnknownPresetError(
            f"unknown preset {name!r}; known presets: {known} (or {AUTO!r} to choose by model). "
            f"Other packages add presets through the entry-point group {ENTRY_POINT_GROUP!r}"
        )
    return preset


def timm_architecture(model: nn.Module) -> str | None:
    """The timm architecture name of ``model`` (``"resnet18"``), from its ``pretrained_cfg``.

    Args:
        model: the network.

    Returns:
        the ``"architecture"`` of its ``pretrained_cfg`` (or ``default_cfg``); ``None`` if it has none.
    """
    for attribute in ("pretrained_cfg", "default_cfg"):
        config = getattr(model, attribute, None)
        if isinstance(config, Mapping) and isinstance(config.get("architecture"), str):
            return config["architecture"]
    return None


def select_preset(model: nn.Module) -> Preset:
    """The preset ``preset="auto"`` gives ``model``.

    First a preset whose ``architectures`` match the timm architecture name, then one whose
    ``module_types`` match a module class in the model, the highest ``priority`` first; else
    ``"default"``. Every plugin preset is loaded for this.

    Args:
        model: the network.

    Returns:
        the chosen preset.

    Raises:
        ValueError: a plugin's entry point does not register the preset it names.
    """
    for name in list(_discovered()):
        if name not in _PRESETS:
            _load_entry_point(name)
    presets = sorted(_PRESETS.values(), key=lambda preset: -preset.priority)
    architecture = timm_architecture(model)
    if architecture is not None:
        for preset in presets:
            if preset.matches_architecture(architecture):
                return preset
    class_names = {type(module).__name__ for module in model.modules()}
    for preset in presets:
        if preset.matches_modules(class_names):
            return preset
    return get_preset(FALLBACK)
