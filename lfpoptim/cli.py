"""The ``lfpoptim`` command: ``lfpoptim explain <model>`` and ``lfpoptim presets``.

```text
lfpoptim explain timm:resnet18                     # the rule table of a timm model (random weights)
lfpoptim explain timm:vit_tiny_patch16_224 --preset default --epsilon 1e-6
lfpoptim explain my_package.models:make_net --input-size 1,28,28
lfpoptim presets                                   # the known presets, plugins included
```

A model is named ``timm:<architecture>`` (built with ``pretrained=False``, inputs of its
``pretrained_cfg["input_size"]`` unless ``--input-size`` says otherwise) or
``<module>:<callable>`` (called without arguments; ``--input-size`` is then required).
``explain`` exits with status 1 under ``--strict`` when an operation has no rule.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import torch
from torch import nn

from .explain import explain
from .presets import AUTO, get_preset, list_presets


def _input_size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--input-size takes comma-separated integers (3,224,224), got {text!r}"
        ) from None
    if not size or any(dim <= 0 for dim in size):
        raise argparse.ArgumentTypeError(f"--input-size must be positive integers, got {text!r}")
    return size


def build_model(spec: str, input_size: tuple[int, ...] | None) -> tuple[nn.Module, tuple[int, ...]]:
    """The model a command-line spec names, and the input size (without the batch) to explain it on.

    Args:
        spec: ``timm:<architecture>`` or ``<module>:<callable>``.
        input_size: one sample's shape; for timm, ``None`` takes the model's ``pretrained_cfg``.

    Returns:
        the model and the input size.

    Raises:
        ValueError: ``spec`` is malformed, or no input size is given or known.
        TypeError: the callable does not return an ``nn.Module``.
        ImportError: the module (or timm) cannot be imported.
        AttributeError: the module has no such callable.
    """
    kind, separator, name = spec.partition(":")
    if not separator or not name:
        raise ValueError(f"name a model as timm:<architecture> or <module>:<callable>, got {spec!r}")
    if kind == "timm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import timm

        model = timm.create_model(name, pretrained=False)
        default_size = tuple(model.pretrained_cfg.get("input_size", ()))
        size = input_size or default_size
        if not size:
            raise ValueError(f"timm gives no input size for {name!r}; pass --input-size")
        return model, size
    factory = getattr(importlib.import_module(kind), name)
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    if input_size is None:
        raise ValueError(f"pass --input-size for {spec} (the shape of one sample, e.g. 3,32,32)")
    return model, input_size


def _explain(args: argparse.Namespace) -> int:
    model, size = build_model(args.model, args.input_size)
    model.train(not args.eval)
    torch.manual_seed(0)
    inputs = torch.randn(args.batch_size, *size)
    explanation = explain(model, inputs, args.preset, epsilon=args.epsilon)
    print(explanation)
    return 1 if args.strict and explanation.uncovered else 0


def _presets(args: argparse.Namespace) -> int:
    names = list_presets(args.pattern)
    width = max((len(name) for name in names), default=0)
    for name in names:
        preset = get_preset(name)
        print(f"{name.ljust(width)}  ε={preset.epsilon:<6g}  {preset.description}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    main_parser = argparse.ArgumentParser(prog="lfpoptim", description="Layer-wise Feedback Propagation tools.")
    commands = main_parser.add_subparsers(dest="command", required=True)

    explain_parser = commands.add_parser(
        "explain", help="print the rule each operation of a model gets", description=__doc__.split("\n\n")[0]
    )
    explain_parser.add_argument("model", help="timm:<architecture> or <module>:<callable>")
    explain_parser.add_argument("--preset", default=AUTO, help="a preset name, or auto (default)")
    explain_parser.add_argument("--epsilon", type=float, help="ε for the preset (default: the preset's own)")
    explain_parser.add_argument("--input-size", type=_input_size, help="one sample's shape, e.g. 3,224,224")
    explain_parser.add_argument("--batch-size", type=int, default=2, help="batch of random inputs (default: 2)")
    explain_parser.add_argument("--eval", action="store_true", help="explain in eval() mode (default: train())")
    explain_parser.add_argument("--strict", action="store_true", help="exit with status 1 if an operation has no rule")
    explain_parser.set_defaults(run=_explain)

    presets_parser = commands.add_parser("presets", help="list the known presets")
    presets_parser.add_argument("pattern", nargs="?", default="*", help="an fnmatch pattern (default: *)")
    presets_parser.set_defaults(run=_presets)
    return main_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lfpoptim`` command; returns the exit status.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        0 on success, 1 when ``explain --strict`` finds an operation without a rule, 2 on an error
        (printed to stderr).

    Raises:
        SystemExit: the arguments are invalid, or ``--help`` was asked for (from `argparse`).
    """
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, ImportError, AttributeError, RuntimeError) as error:
        print(f"lfpoptim {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
