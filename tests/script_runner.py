"""Run the repository's scripts (examples, plot scripts) from tests, in this process where possible."""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def run_script(*args: str, timeout: int = 300, env: dict[str, str] | None = None) -> str:
    """Run a repository script with this interpreter in a new process; return its stdout, failing with its stderr."""
    completed = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", **(env or {})},
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def run_in_process(script: str, *args: str) -> str:
    """Run a repository script as ``__main__`` in this process (no second torch import); return its stdout.

    As ``python script`` does, the script's folder comes first on ``sys.path`` (the examples import
    ``examples/_digits.py``). The torch thread count and random state it changes are restored
    afterwards. Scripts that register presets run in a subprocess instead (`run_script`): the
    registry is global.
    """
    threads = torch.get_num_threads()
    argv, path = sys.argv, sys.path
    stdout = io.StringIO()
    try:
        sys.argv = [script, *args]
        sys.path = [str((ROOT / script).parent), *path]
        with torch.random.fork_rng(), contextlib.redirect_stdout(stdout):
            runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        sys.argv, sys.path = argv, path
        torch.set_num_threads(threads)
    return stdout.getvalue()
