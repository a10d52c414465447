"""examples/pruning_digits.py must keep running (smoke mode: 1 seed, 1 epoch, 3 fractions)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CELL = r"(\d\.\d{3}) ± \d\.\d{3}"


def test_pruning_digits_smoke_prints_table_and_writes_plot(tmp_path: Path) -> None:
    plot = tmp_path / "plots" / "pruning.png"
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "pruning_digits.py"), "--smoke", "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    stdout = completed.stdout

    seed_line = re.search(r"seed 0: test accuracy after 1 epoch\(s\)\s+LFP (\d\.\d+)\s+SGD (\d\.\d+)", stdout)
    assert seed_line is not None, stdout
    lfp_accuracy, sgd_accuracy = (float(value) for value in seed_line.groups())
    # One epoch of 12 steps already beats guessing (0.1) for both optimizers.
    assert lfp_accuracy > 0.2
    assert sgd_accuracy > 0.2

    rows = {
        match[0]: [float(value) for value in match[1:]]
        for match in re.findall(rf"\| (\d+)% \| {CELL} \| {CELL} \| {CELL} \| {CELL} \|", stdout)
    }
    assert list(rows) == ["0", "50", "90"], stdout
    # Columns: LFP magnitude, SGD magnitude, LFP relevance, SGD relevance. Unpruned, both
    # criteria evaluate the same model, which is the one reported on the seed line.
    lfp_magnitude, sgd_magnitude, lfp_relevance, sgd_relevance = rows["0"]
    assert lfp_magnitude == lfp_relevance == pytest.approx(lfp_accuracy, abs=1e-3)
    assert sgd_magnitude == sgd_relevance == pytest.approx(sgd_accuracy, abs=1e-3)
    assert all(0.0 <= value <= 1.0 for row in rows.values() for value in row)

    assert re.search(r"\| 3\.weight \| (\d\.\d{3} \| ){3}\d\.\d{3} \|", stdout) is not None, stdout
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
