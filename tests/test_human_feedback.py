"""examples/human_feedback.py as a person uses it: piped answers, a real terminal (tmux), save and resume."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from script_runner import ROOT, run_in_process

SCRIPT = "examples/human_feedback.py"
DRAWN_ROW = re.compile(r"^[ .:\-=+*#%@]{16}$", flags=re.MULTILINE)  # one row of an 8x8 digit, 2 characters a pixel
INKED_ROW = re.compile(r"^[ .:\-=+*#%@]*[#%@][ .:\-=+*#%@]*$", flags=re.MULTILINE)
ACCURACY = re.compile(r"held-out accuracy (\d\.\d{3}) after (\d+) answers")


def environment() -> dict[str, str]:
    """This interpreter's environment, with the tree's ``lfpoptim`` importable (as in an editable install)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def answer(state: Path, keystrokes: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the program with ``keystrokes`` on its standard input, as a person typing them would."""
    return subprocess.run(
        [sys.executable, SCRIPT, "--state", str(state), *args],
        input=keystrokes,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
        env=environment(),
    )


def answer_in_process(keystrokes: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """As `answer`, in this process (no second torch import): the keystrokes become ``sys.stdin``."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(keystrokes))
    return run_in_process(SCRIPT, *args)


def test_a_person_answers_skips_quits_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "sitting.pt"
    # batch of 2: y and n make one step; then an invalid key, a skip, and q in the middle of the second batch
    first = answer(state, "y\nn\nmaybe\ns\nq\n", "--batch", "2").stdout
    assert len(DRAWN_ROW.findall(first)) == 4 * 8  # four digits drawn (the invalid key asks again), 8 rows each
    assert re.search(r"Is it an? \d\? \[y/n\], s to skip, q to save and quit", first)
    assert "please answer y, n, s or q" in first
    assert [match[1] for match in ACCURACY.findall(first)] == ["0", "2"]
    assert f"saved to {state}: 2 answers" in first
    saved = torch.load(state, weights_only=True)
    assert saved["progress"]["answers"] == 2
    assert saved["progress"]["position"] == 2

    # the next sitting goes on from the saved model and the next digit; end of input saves and quits too
    second = answer_in_process("n\nn\n", "--state", str(state), "--batch", "2", monkeypatch=monkeypatch)
    assert f"resumed from {state}: 2 answers so far" in second
    assert f"saved to {state}: 4 answers" in second
    resumed = torch.load(state, weights_only=True)
    assert resumed["progress"]["history"][0] == saved["progress"]["history"][0]
    assert any(not torch.equal(resumed["model"][name], value) for name, value in saved["model"].items())


def test_ratings_are_checked_and_a_quit_mid_batch_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "ratings.pt"
    stdout = answer_in_process(
        "5\n7\n1\nq\n", "--state", str(state), "--rating", "--batch", "3", monkeypatch=monkeypatch
    )
    assert re.search(r"Rate the guess \d: 1 \(wrong\) to 5 \(right\)", stdout)
    assert "please answer 1-5, s or q" in stdout
    assert not state.exists()  # the only batch was interrupted: no step, nothing to save
    assert [match[1] for match in ACCURACY.findall(stdout)] == ["0"]


def test_the_oracle_trains_the_model_from_its_answers(tmp_path: Path) -> None:
    stdout = run_in_process(SCRIPT, "--judge", "oracle", "--digits", "400", "--state", str(tmp_path / "o.pt"))
    accuracies = [float(value) for value, _ in ACCURACY.findall(stdout)]
    assert len(accuracies) == 1 + 400 // 8
    assert accuracies[0] < 0.2  # a random start
    assert accuracies[-1] > 0.35  # after 400 yes/no answers (0.65 after 1000, see the custom-rewards page)


def test_smoke_run_saves_and_plots(tmp_path: Path) -> None:
    plot = tmp_path / "curve.png"
    stdout = run_in_process(SCRIPT, "--smoke", "--state", str(tmp_path / "s.pt"), "--plot", str(plot))
    assert "64 answers" in stdout
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# --- in a real terminal: tmux, with keys sent as a person would press them ---


class Terminal:
    """A detached tmux session running one command; read its screen, type into it."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.name = f"lfpoptim-{uuid.uuid4().hex[:8]}"
        line = "env " + " ".join(shlex.quote(f"{key}={env[key]}") for key in ("PYTHONPATH", "HF_HUB_OFFLINE"))
        line += f" {shlex.join(command)}; echo PROGRAM-ENDED; sleep 30"
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.name, "-x", "100", "-y", "50", "-c", str(ROOT), line], check=True
        )

    def screen(self) -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-J", "-t", self.name, "-S", "-200"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60.0) -> str:
        """Wait until ``pattern`` shows ``count`` times on the screen; return the screen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if len(re.findall(pattern, screen)) >= count:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} did not show {count} time(s) within {timeout} s:\n{self.screen()}")

    def type(self, keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, keys, "Enter"], check=True)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], check=False, capture_output=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_a_person_trains_in_a_terminal(tmp_path: Path) -> None:
    state = tmp_path / "terminal.pt"
    command = [sys.executable, SCRIPT, "--state", str(state), "--batch", "2"]
    terminal = Terminal(command, environment())
    try:
        prompt = r"Is it an? (\d)\? \[y/n\]"
        terminal.wait_for(prompt)
        terminal.type("y")
        terminal.wait_for(prompt, count=2)
        terminal.type("n")
        screen = terminal.wait_for(r"held-out accuracy \d\.\d{3} after 2 answers")
        assert len(INKED_ROW.findall(screen)) >= 2 * 6  # tmux drops trailing blanks; most rows have ink
        terminal.wait_for(prompt, count=3)
        terminal.type("q")
        screen = terminal.wait_for("PROGRAM-ENDED")
        assert f"saved to {state}: 2 answers" in screen
    finally:
        terminal.close()
