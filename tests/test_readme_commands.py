"""Every command in README.md's ```bash blocks runs as written, in order, on a fresh clone.

The commands run through the real CLI (in process, for speed) in a temporary directory laid out
like a clone: the repository's ``examples/`` beside a ``shared`` sibling, so that ``../shared/...``
resolves. That sibling is a small copy of the shared CIFAR-10 data (one image per class, the same
class folders) plus the real weights, and calibration takes fewer Adam steps per block: the
distillation commands run as written, every step of them, in seconds.
The quickstart's set-up (venv, pip, pytest) cannot run here: its shape is checked and its
``ghostify`` part is run. Usage lines (``ghostify convert MODEL [--ratio S] ...``) cannot run
either: every option they name must exist on their command.

Set ``GHOSTIFY_README`` to check another checkout's README (and its ``examples/``).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import ghostify.recovery
from ghostify.cli import app

from conftest import REPO, shared_dir

pytestmark = pytest.mark.usefixtures("single_thread")

SHARED_SPLITS = ("train", "val", "test")
IMAGES_PER_CLASS = 1
CALIBRATION_BLOCK_STEPS = 20  # instead of 600: the block reconstruction of ResNet-20 alone takes a minute on 2 cores
QUICKSTART_SETUP = "python3 -m venv .venv && .venv/bin/pip install -q -e "
QUICKSTART_RUN = ".venv/bin/ghostify convert resnet50 --ratio 2"
QUICKSTART_TESTS = ".venv/bin/python -m pytest -q"

runner = CliRunner()


@dataclass(frozen=True)
class ReadmeCommand:
    """One command of a ```bash block: its section heading, its text (continuations joined) and its words."""

    section: str
    text: str

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def is_usage(self) -> bool:
        """A usage line (``ghostify convert MODEL [--ratio S] ...``) rather than a command to run."""
        return any(word.startswith("[") or word.isupper() for word in self.words)


def readme_path() -> Path:
    return Path(os.environ.get("GHOSTIFY_README", REPO / "README.md"))


def readme_commands(text: str) -> list[ReadmeCommand]:
    """The commands of every ```bash block of ``text``, in order, each with its ``## `` section."""
    commands, section, block = [], "", None
    for line in text.splitlines():
        if block is None and line.startswith("## "):
            section = line[3:].strip()
        elif block is None and line.strip() == "```bash":
            block = []
        elif block is not None and line.strip() == "```":
            joined = "\n".join(block).replace("\\\n", " ")
            commands += [ReadmeCommand(section, " ".join(command.split())) for command in joined.splitlines()
                         if command.strip() and not command.strip().startswith("#")]
            block = None
        elif block is not None:
            block.append(line)
    return commands


def run_ghostify(command: str) -> None:
    """Run a ``ghostify ...`` command line through the CLI; fail with its output unless it exits 0."""
    words = shlex.split(command, comments=True)
    assert words[0] == "ghostify", command
    result = runner.invoke(app, words[1:])
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    trace = "".join(traceback.format_exception(result.exception)) if crashed else ""
    assert result.exit_code == 0, f"`{command}` exited {result.exit_code}:\n{result.output}{trace}"


@pytest.fixture(scope="module")
def readme() -> list[ReadmeCommand]:
    return readme_commands(readme_path().read_text(encoding="utf-8"))


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory laid out like a fresh clone (``examples/``, nothing else), made current."""
    directory = tmp_path / "ghostify"
    directory.mkdir()
    shutil.copytree(readme_path().parent / "examples", directory / "examples")
    monkeypatch.chdir(directory)
    return directory


@pytest.fixture
def small_shared(clone: Path) -> Path:
    """``../shared`` beside ``clone``: the real weights and ``IMAGES_PER_CLASS`` CIFAR-10 images per class, linked."""
    source = shared_dir()
    if not (source / "weights").is_dir() or not all((source / "data" / "cifar10" / split).is_dir() for split in SHARED_SPLITS):
        pytest.skip(f"shared CIFAR-10 data or weights not found in {source}; set GHOSTIFY_SHARED")
    target = clone.parent / "shared"
    (target / "weights").mkdir(parents=True)
    for weights in (source / "weights").iterdir():
        (target / "weights" / weights.name).symlink_to(weights.resolve())
    for split in SHARED_SPLITS:
        for class_dir in sorted(p for p in (source / "data" / "cifar10" / split).iterdir() if p.is_dir()):
            (target / "data" / "cifar10" / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:IMAGES_PER_CLASS]:
                (target / "data" / "cifar10" / split / class_dir.name / image.name).symlink_to(image.resolve())
    return target


def test_quickstart_is_set_up_then_one_ghostify_command(readme: list[ReadmeCommand], clone: Path) -> None:
    quickstart = [command.text for command in readme if command.section == "Quickstart"]
    assert len(quickstart) == 2, quickstart
    run, tests = quickstart
    assert run.startswith(QUICKSTART_SETUP) and run.endswith(f" && {QUICKSTART_RUN}"), run
    assert tests.startswith(QUICKSTART_SETUP) and tests.endswith(f" && {QUICKSTART_TESTS}"), tests
    run_ghostify(QUICKSTART_RUN.removeprefix(".venv/bin/"))


def test_usage_lines_name_only_existing_options(readme: list[ReadmeCommand]) -> None:
    commands = typer.main.get_command(app)  # the click group typer builds: its commands and their options
    usage = [command for command in readme if command.is_usage]
    assert {command.words[1] for command in usage} >= {"convert", "distill", "inspect", "compare", "sweep"}
    for command in usage:
        assert command.words[0] == "ghostify" and command.words[1] in commands.commands, command.text
        known = {opt for param in commands.commands[command.words[1]].params for opt in (*param.opts, *param.secondary_opts)}
        named = {match for word in command.words[2:] for match in re.findall(r"^\[*(--?[a-z][a-z0-9-]*)", word)}
        assert named <= known, f"{command.text}\nnames options that `ghostify {command.words[1]}` lacks: {sorted(named - known)}"


def test_readme_commands_run_as_written_in_order(readme: list[ReadmeCommand], small_shared: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ghostify.recovery, "calibrate_model", functools.partial(
        ghostify.recovery.calibrate_model, block_steps=CALIBRATION_BLOCK_STEPS))
    runnable = [command for command in readme if command.section != "Quickstart" and not command.is_usage]
    assert len(runnable) >= 5, [command.text for command in runnable]
    for command in runnable:
        run_ghostify(command.text)
