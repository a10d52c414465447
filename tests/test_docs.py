"""The documentation site stays true: its examples run, its plots can be regenerated, its API pages are complete.

Every example in ``examples/`` is shown on the site (``--8<--`` snippets) and run by a test in
smoke mode; the examples written for the how-to guides are run here. The strict site build itself
is a step of ``.ci/run``; where ``/usr/bin/chromium`` exists, the built site is also opened in
headless Chromium and its screenshots, formulas and plots are checked (``scripts/screenshot_docs.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from script_runner import run_in_process, run_script

import lfpoptim
from lfpoptim.presets import registry

if TYPE_CHECKING:
    import griffe

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
TESTS = ROOT / "tests"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SNIPPET = re.compile(r'--8<-- "(examples/[\w/]+\.py)(?::[\w-]+)?"')
DIRECTIVE = re.compile(r"^::: ([\w.]+)", flags=re.MULTILINE)


def doc_pages() -> dict[Path, str]:
    return {path: path.read_text() for path in sorted(DOCS.rglob("*.md"))}


# --- examples: shown on the site and run in CI ---


def test_every_example_is_run_by_a_test_in_smoke_mode() -> None:
    test_sources = {path.name: path.read_text() for path in TESTS.glob("test_*.py")}
    untested = [
        example.name
        for example in sorted(EXAMPLES.glob("*.py"))
        if not example.name.startswith("_")  # a helper the examples import (_digits.py), run with them
        and not any(example.name in source and "--smoke" in source for source in test_sources.values())
    ]
    assert not untested, f"examples that no test file runs (in smoke mode or a short run): {untested}"


def test_every_example_is_included_in_the_docs() -> None:
    included = {match for text in doc_pages().values() for match in SNIPPET.findall(text)}
    examples = [f"examples/{path.name}" for path in sorted(EXAMPLES.glob("*.py"))]
    missing = [example for example in examples if example not in included]
    assert not missing, f'examples that no page includes with --8<-- "examples/...": {missing}'
    assert all((ROOT / path).is_file() for path in included), included


def test_snippet_includes_are_intact() -> None:
    """A formatter that treats the include line as Python rewrites it to ``--8 < --"..."`` (ruff >= 0.16)."""
    broken = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path, text in doc_pages().items()
        for number, line in enumerate(text.splitlines(), start=1)
        if re.search(r"--8\s*<\s*--", line) and not re.fullmatch(r'\s*--8<-- "[^"]+"', line)
    ]
    assert not broken, f'include lines must read --8<-- "path" (keep docs/ out of ruff format): {broken}'


def test_quickstart_trains_relu_and_heaviside_mlps() -> None:
    stdout = run_in_process("examples/quickstart.py", "--smoke")
    epoch = re.search(r"epoch 0: mean reward (-?\d\.\d+), accuracy (\d\.\d+)", stdout)
    assert epoch is not None, stdout
    assert float(epoch.group(2)) > 0.7  # one epoch of the docs' first loop, far above chance (0.1)
    assert "{'0.weight': (256, 64), '0.bias': (256,), '2.weight': (10, 256), '2.bias': (10,)}" in stdout
    heaviside = re.search(r"Heaviside MLP after 1 epoch\(s\): training accuracy (\d\.\d+)", stdout)
    assert heaviside is not None, stdout
    assert float(heaviside.group(1)) > 0.3  # a step network that gradients could not move


def test_custom_rewards_learn_including_from_yes_no_feedback() -> None:
    stdout = run_in_process("examples/custom_rewards.py", "--epochs", "8")
    rows = [
        [float(value) for value in line.split()[1:]]
        for line in stdout.splitlines()
        if re.fullmatch(r"\s*\d+(\s+\d\.\d{4}){3}", line)
    ]
    assert len(rows) == 8, stdout
    softmax, class_weighted, yes_no = rows[-1]
    assert softmax > 0.9
    assert class_weighted > 0.9
    # The judge's yes/no is the only use of the label: from chance to well above it in 8 epochs.
    assert rows[0][2] < 0.5
    assert yes_no > 0.7
    recall = re.search(r"recall of the digit 8 after the last epoch\n\s+(\d\.\d{4})\s+(\d\.\d{4})", stdout)
    assert recall is not None, stdout


def test_checkpoint_resume_is_bit_identical_and_restores_the_schedule() -> None:
    stdout = run_in_process("examples/checkpoint_resume.py", "--epochs", "4")
    # one warm-up epoch, then cosine over 3 epochs: after epoch 2 the learning rate is 0.1 * (1 + cos(pi/3)) / 2
    assert "resumed at epoch 2, learning rate 0.0750" in stdout
    assert "plain SGD loaded the checkpoint: 6 momentum buffers" in stdout
    assert "largest parameter difference, straight vs resumed: 0\n" in stdout


def test_preset_plugin_is_chosen_automatically_and_silences_the_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # the example registers its preset in the global registry: give it a copy, dropped afterwards
    presets = registry._PRESETS
    monkeypatch.setattr(registry, "_PRESETS", dict(presets))
    stdout = run_in_process("examples/preset_plugin.py", "--smoke")
    assert "sine" in registry._PRESETS
    assert "sine" not in presets
    default_line, warning_line, auto_line, similarity_line = stdout.strip().splitlines()
    assert default_line.startswith("preset='default' -> 'default'")
    assert "have no LFP rule under preset 'default'" in warning_line
    assert "sin (x2)" in warning_line
    assert auto_line.startswith("preset='auto' -> 'sine'")  # no warning line follows it
    similarity = float(similarity_line.rsplit(" ", 1)[1])
    assert 0.9 < similarity < 1.0  # close at initialisation, yet the rule map did change the feedback


def test_preset_plugin_loads_through_an_entry_point(tmp_path: Path) -> None:
    """What docs/howto/presets-plugin.md tells a plugin author to write in pyproject.toml works."""
    dist_info = tmp_path / "sine_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: sine-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[lfpoptim.presets]\nsine = preset_plugin:sine\n")
    check = (
        "import sys\n"
        "from lfpoptim.presets import get_preset, list_presets\n"
        "assert 'sine' in list_presets(), list_presets()\n"
        "assert 'preset_plugin' not in sys.modules  # listed without being imported\n"
        "preset = get_preset('sine')\n"
        "print(preset.name, preset.origin, preset.module_types, preset.description)\n"
    )
    pythonpath = os.pathsep.join([str(tmp_path), str(EXAMPLES)])
    stdout = run_script("-c", check, env={"PYTHONPATH": pythonpath})
    assert stdout.startswith("sine preset_plugin ('Sine',) The default rules, plus the identity rule for"), stdout


def test_explain_table_in_the_preset_guide_is_what_explain_prints() -> None:
    class Sine(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.sin(z)

    guide = (DOCS / "howto" / "presets-plugin.md").read_text()
    shown = re.search(r"```text\n(module  type .*?)```", guide, flags=re.DOTALL)
    assert shown is not None, "the guide shows no explain table"
    layers = [torch.nn.Linear(64, 256), Sine(), torch.nn.Linear(256, 256), Sine(), torch.nn.Linear(256, 10)]
    printed = str(lfpoptim.explain(torch.nn.Sequential(*layers), torch.randn(2, 64), preset="default"))
    printed_lines = {" ".join(line.split()) for line in printed.splitlines()}
    for line in shown.group(1).splitlines():
        if line.strip() != "...":
            assert " ".join(line.split()) in printed_lines, f"{line!r} not in:\n{printed}"


def test_lfprop_migration_runs_all_three_settings() -> None:
    stdout = run_in_process("examples/lfprop_migration.py", "--smoke")
    rows = dict(re.findall(r"^\s*([\w ,]+): (\d\.\d{3})$", stdout, flags=re.MULTILINE))
    assert set(rows) == {"reference settings", "lfpoptim defaults", "defaults, clip 1"}, stdout
    assert all(0.0 <= float(accuracy) <= 1.0 for accuracy in rows.values())
    assert float(rows["reference settings"]) > 0.3  # one epoch of the reference's loop beats chance (0.1)


# Examples of the feature pages whose authors had not added a smoke test when these were written.


def test_regression_example_beats_predicting_the_mean() -> None:
    stdout = run_in_process("examples/regression.py", "--smoke")
    baseline = re.search(r"test MSE of predicting the training mean: (\d+\.\d+)", stdout)
    rows = re.findall(r"^\s*(\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)$", stdout, flags=re.MULTILINE)
    assert baseline is not None, stdout
    assert [epoch for epoch, _, _ in rows] == ["1", "2"], stdout
    lfp_mse = float(rows[-1][1])
    assert lfp_mse < float(baseline.group(1))  # two epochs of SquaredErrorReward already fit something


def test_timm_digits_example_runs_a_timm_resnet() -> None:
    stdout = run_in_process("examples/timm_digits.py", "--smoke")
    assert "preset 'resnet'" in stdout, stdout  # chosen by preset="auto" from the timm architecture name
    row = re.search(r"^\s*1\s+(-?\d+\.\d+)\s+(\d\.\d{3})\s", stdout, flags=re.MULTILINE)
    assert row is not None, stdout
    assert 0.0 <= float(row.group(2)) <= 1.0


# --- plots: committed, referenced, and regenerable by the command the page names ---


def test_every_committed_plot_is_shown_with_the_command_that_makes_it() -> None:
    pages = doc_pages()
    for plot in sorted((DOCS / "plots").glob("*.png")):
        showing = [path for path, text in pages.items() if f"plots/{plot.name})" in text]
        assert showing, f"docs/plots/{plot.name} is on no page"
        commands = ("scripts/docs_plots.py", f"--plot docs/plots/{plot.name}")  # the plot script, or a benchmark's
        for path in showing:
            named = any(command in pages[path] for command in commands)
            assert named, f"{path.name} shows {plot.name} without its command"
        assert plot.read_bytes().startswith(PNG_SIGNATURE)


def test_docs_plots_script_makes_every_plot(tmp_path: Path) -> None:
    committed_benchmark = DOCS / "plots" / "step_time_cpu.json"
    stdout = run_in_process(
        "scripts/docs_plots.py", "all", "--smoke", "--from-json", str(committed_benchmark), "--out", str(tmp_path)
    )
    for name in ("step_time.png", "digits_learning_curves.png", "feedback_sparsity.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE), name
    # the tables the script prints for docs/benchmarks.md
    assert re.search(r"\| 2 \| 0\.\d{3} \(0\.\d{3}-0\.\d{3}\) \| 0\.\d{3} ", stdout), stdout
    assert re.search(r"\| resnet18 \| [\d.]+ \| [\d.]+ \| 1\.\d\d \| [\d.]+ \| [\d.]+ \| 1\.\d\d \|", stdout), stdout
    assert re.search(r"\| 4\.weight \| 0\.\d{3} \| 0\.\d{3} \| 0\.\d{3} \| 0\.\d{3} \|", stdout), stdout


# --- the API reference: every exported name on the page, every public signature typed ---


def api_directives() -> set[str]:
    """The objects rendered with ``::: name``, on the API page or on a feature page's own API section."""
    return {name for text in doc_pages().values() for name in DIRECTIVE.findall(text)}


def test_api_page_documents_every_exported_name() -> None:
    directives = api_directives()
    undocumented = []
    for name in lfpoptim.__all__:
        if name == "__version__":
            continue
        exported = getattr(lfpoptim, name)
        module = exported.__name__ if isinstance(exported, type(lfpoptim)) else exported.__module__
        covered = f"lfpoptim.{name}" in directives or any(
            module == directive or module.startswith(f"{directive}.") for directive in directives
        )
        if not covered:
            undocumented.append(name)
    assert not undocumented, f"exported from lfpoptim but on no '::: ...' line of the docs: {undocumented}"


def test_api_page_directives_name_importable_objects() -> None:
    for directive in sorted(api_directives()):
        module_name, _, attribute = directive.rpartition(".")
        try:
            importlib.import_module(directive)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module_name), attribute), directive


@pytest.fixture(scope="module")
def package() -> griffe.Module:
    """The package as mkdocstrings sees it (griffe comes with the ``docs`` extra)."""
    griffe = pytest.importorskip("griffe")
    return griffe.load("lfpoptim", search_paths=[str(ROOT)], docstring_parser="google")


def public_objects(module: griffe.Module) -> list[griffe.Object]:
    found: list[griffe.Object] = []

    def walk(obj: griffe.Object) -> None:
        for name, member in obj.members.items():
            if member.is_alias or name.startswith("_"):
                continue
            found.append(member)
            if member.is_module or member.is_class:
                walk(member)

    walk(module)
    return found


def test_every_public_module_class_and_function_has_a_docstring(package: griffe.Module) -> None:
    missing = [
        obj.path
        for obj in public_objects(package)
        if (obj.is_module or obj.is_class or (obj.is_function and not obj.parent.is_class)) and not obj.docstring
    ]
    assert not missing, f"public names without a docstring: {missing}"


def test_every_public_signature_has_types(package: griffe.Module) -> None:
    from griffe import DocstringSectionKind

    untyped = []
    for obj in public_objects(package):
        if obj.docstring is not None:  # rows of the Args/Attributes/Returns tables of the API reference
            untyped += [
                f"{obj.path}: {section.kind.value} entry {entry.name!r}"
                for section in obj.docstring.parse("google")
                if section.kind
                in (DocstringSectionKind.parameters, DocstringSectionKind.attributes, DocstringSectionKind.returns)
                for entry in section.value
                if entry.annotation is None
            ]
        if not obj.is_function:
            continue
        untyped += [
            f"{obj.path}({parameter.name})"
            for parameter in obj.parameters
            if parameter.name not in ("self", "cls") and parameter.annotation is None
        ]
        if obj.returns is None:
            untyped.append(f"{obj.path} -> ?")
    assert not untyped, f"parameters, attributes or returns without a type (annotate them): {untyped}"


# --- the built site, as a browser shows it ---

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs the system Chromium (apt-get install -y chromium)")
def test_site_renders_pages_formulas_and_plots_in_headless_chromium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Home, the API page of LFPOptimizer, Concepts and Benchmarks: drawn, formulas typeset, plot shown."""
    spec = importlib.util.spec_from_file_location("screenshot_docs", ROOT / "scripts" / "screenshot_docs.py")
    assert spec is not None
    assert spec.loader is not None
    screenshot_docs = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "screenshot_docs", screenshot_docs)  # its dataclasses look themselves up there
    spec.loader.exec_module(screenshot_docs)
    failures = screenshot_docs.check_site(tmp_path, str(CHROMIUM))
    assert not failures, "\n".join(failures)
    for page in screenshot_docs.PAGES:
        assert (tmp_path / f"{page.name}.png").read_bytes().startswith(PNG_SIGNATURE)
