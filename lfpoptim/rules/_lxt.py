"""lxt's efficient (gradient × input) rules, without the cost of importing ``lxt.efficient``.

The package ``lxt.efficient`` imports Hugging Face ``transformers`` model code when it is
imported (about 10 s on a small machine), while its ``rules`` module needs nothing but torch. So
that ``import lfpoptim`` stays fast, that one file of the installed lxt is loaded on its own, under
a private module name; its functions are lxt's, unchanged.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_MODULE_NAME = "lfpoptim.rules._lxt_efficient_rules"


def _load_efficient_rules() -> ModuleType:
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    package = importlib.util.find_spec("lxt")
    if package is None or package.origin is None:
        raise ImportError("lfpoptim needs lxt (pip install 'lxt>=2.1') for its attention and product rules")
    path = Path(package.origin).parent / "efficient" / "rules.py"
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ImportError(f"lxt at {path.parent.parent} has no efficient/rules.py; lfpoptim needs lxt>=2.1")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


divide_gradient = _load_efficient_rules().divide_gradient
"""lxt's uniform rule: the identity forward, the gradient divided by ``factor`` backward."""
