"""The examples a new user runs first must keep running (in smoke mode, in this process)."""

import re
from pathlib import Path

from script_runner import run_in_process

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_train_digits_smoke_prints_accuracies_and_writes_plot(tmp_path: Path) -> None:
    plot = tmp_path / "plots" / "digits.png"
    stdout = run_in_process("examples/train_digits.py", "--smoke", "--plot", str(plot))

    epoch_line = re.search(r"epoch\s+1\s+test accuracy\s+LFP (\d\.\d+)\s+SGD (\d\.\d+)", stdout)
    assert epoch_line is not None, stdout
    mean_line = re.search(r"mean final test accuracy over 1 seed\(s\)\s+LFP (\d\.\d+)\s+SGD (\d\.\d+)", stdout)
    assert mean_line is not None, stdout
    lfp_accuracy, sgd_accuracy = (float(value) for value in mean_line.groups())
    # One epoch from a random start already beats guessing (0.1) by far, for both optimizers.
    assert lfp_accuracy > 0.5
    assert sgd_accuracy > 0.5

    assert plot.read_bytes().startswith(PNG_SIGNATURE)


def test_dropin_loop_smoke_prints_both_optimizers() -> None:
    stdout = run_in_process("examples/dropin_loop.py", "--smoke")
    row = re.search(r"^\s+1\s+(\d\.\d+)\s+(\d\.\d+)$", stdout, flags=re.MULTILINE)
    assert row is not None, stdout
    sgd_accuracy, lfp_accuracy = (float(value) for value in row.groups())
    # eight steps of either optimizer take the model far from chance (0.1)
    assert sgd_accuracy > 0.5
    assert lfp_accuracy > 0.5
