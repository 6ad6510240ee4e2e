"""Fuzzing the command line: random argument lists for ``convert`` / ``inspect`` must never crash.

Arguments are drawn from a vocabulary of valid and invalid tokens (wrong types, negative and huge
numbers, empty strings, unknown options, missing values, broken patterns, unicode, paths that do
not exist or have the wrong kind). Whatever the combination, ghostify must answer with exit code
0 (worked), 1 (a one-line ``error:`` message) or 2 (typer's usage error), never a traceback.
Every run happens inside a scratch working directory, with $HOME in scratch space too, so an
output path that resolves to the current or home directory can at worst damage those, which the
test then checks are intact.

The second half pins, one by one, the bad inputs that used to crash or misbehave.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from ghostify.cli import app

pytestmark = pytest.mark.usefixtures("single_thread")

runner = CliRunner()

TINY_MODEL = """\
from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3))
"""


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Model files, checkpoints and paths of every kind, plus a scratch working directory."""
    root = tmp_path_factory.mktemp("fuzz")
    files = {
        "tiny.py": TINY_MODEL,
        "raises.py": "def make():\n    raise RuntimeError('boom')\n",
        "syntax.py": "def make(:\n    return 1\n",
        "not_a_model.py": "def make():\n    return 3\n",
        "needs_args.py": "def make(width):\n    return None\n",
        "empty.pth": "",
        "text.pth": "this is not a checkpoint\n",
        "notes.txt": "a file where a directory is expected\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    torch.manual_seed(0)
    torch.save(_tiny().state_dict(), root / "tiny.pth")
    torch.save({"state_dict": _tiny().state_dict(), "args": argparse.Namespace(lr=0.1)}, root / "pickled.pth")
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 1)).state_dict(), root / "other_model.pth")
    torch.save([1, 2, 3], root / "list.pth")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("user data")
    for name in ("cwd", "home"):
        (root / name).mkdir()
        (root / name / "keep.txt").write_text("user data")
    return {"root": root, "cwd": root / "cwd", "home": root / "home"}


def _vocabulary(root: Path) -> dict[str, list]:
    """Model specs and option fragments, split into plausible and broken ones."""
    tiny = f"{root / 'tiny.py'}:make"
    bad_models = [
        "resnt50x", "torchvision:nope", "timm:", "", " ", ":", "nope.py", f"{root / 'missing.py'}:make",
        f"{root / 'raises.py'}:make", f"{root / 'syntax.py'}:make", f"{root / 'not_a_model.py'}:make",
        f"{root / 'needs_args.py'}:make", f"{root / 'tiny.py'}:", f"{root / 'tiny.py'}:nn", f"{root}:make",
        "模型", "-", "--ratio",
    ]
    good = [
        ["--ratio", "2"], ["--ratio", "3"], ["-s", "4"], ["--ratio", "1000000000000"], ["--dw-size", "1"],
        ["--dw-size", "5"], ["--min-channels", "1"], ["--min-channels", "1000000000000"],
        ["--include", "0"], ["--include", "re:.*"], ["--include", "*"], ["--exclude", "2"],
        ["--exclude", "re:\\d+"], ["--include", "[02]"], ["--layer-ratio", "0=3"], ["--layer-ratio", "*=2"],
        ["--layer-ratio", "0=1"], ["--layer-ratio", "2=1000000000000"], ["--checkpoint", str(root / "tiny.pth")],
        ["--skip-stem"], ["--skip-pointwise"],
    ]
    convert_good = [
        ["--input-size", "3,8,8"], ["--input-size", "8"], ["--input-size", "3x16x16"], ["--input-size", "8,8"],
        ["-o", "OUT"], ["-o", "OUT"], ["-o", "OUT", "--force"], ["--force"], ["--dry-run"], ["--layers"],
        ["--variant", "paper-bn-relu"], ["--init", "random"], ["--latency"],
    ]
    numbers = ["0", "-1", "1.5", "abc", "", "²", "9" * 30]
    patterns = ["re:(", "re:[", "[", "[!", "**", "é", "", "layer99", "0.weight", "\\", "re:a{99999999999}",
                "re:" + "(" * 1000 + ")" * 1000, "re:(?P<a>)(?P<a>)"]
    bad = (
        [["--ratio", v] for v in numbers] + [["--dw-size", v] for v in ["2", "0", "-3", "11", "1000001", ""]]
        + [["--min-channels", v] for v in numbers]
        + [["--include", v] for v in patterns] + [["--exclude", v] for v in patterns]
        + [["--layer-ratio", v] for v in ["=2", "0=", "0=0", "0=²", "x", "re:(=2", "0=-1", "0=2=3", "layer99=2"]]
        + [["--checkpoint", str(root / name)] for name in
           ("missing.pth", "empty.pth", "text.pth", "pickled.pth", "other_model.pth", "list.pth", "tiny.py")]
        + [["--checkpoint", str(root)], ["--checkpoint", ""],
           ["--trust-checkpoint", "--checkpoint", str(root / "pickled.pth")], ["--pretrained"], ["--trust-checkpoint"]]
        + [["--variant", v] for v in ["foo", ""]] + [["--init", v] for v in ["", "RANDOM"]]
        + [["--bogus"], ["-x"], ["extra-positional"], ["--ratio"], ["--help"], ["--", "--ratio"]]
    )
    convert_bad = (
        [["--input-size", v] for v in ["0,0,0", "0,32,32", "3,1,1", "abc", "", "3,8", "1,2,3,4", "99999999999",
                                      "²", "-3,8,8", "3,,8", "3,99999999,99999999"]]
        + [["-o", v] for v in [str(root / "notes.txt"), str(root / "full"), "/proc/ghostify-out",
                              str(root / "notes.txt" / "sub"), "", ".", "..", "~"]]
        + [["-o", v, "--force"] for v in [str(root / "full"), "", ".", "/proc/ghostify-out", str(root)]]
        + [["--device", "foo", "--latency"], ["--device", "", "--latency"], ["--data", str(root / "missing-data")],
           ["--data", str(root / "notes.txt")], ["--data-limit", "0"], ["--input-size"], ["-o"]]
    )
    return {"tiny": tiny, "bad_models": bad_models, "good": good, "bad": bad,
            "convert_good": convert_good, "convert_bad": convert_bad}


_output_ids = itertools.count()


def command_line(root: Path, rng: random.Random) -> list[str]:
    """One random argument list: mostly plausible, with zero to two broken pieces."""
    vocab = _vocabulary(root)
    command = "convert" if rng.random() < 0.7 else "inspect"
    fragments = [rng.choice(vocab["good"]) for _ in range(rng.randint(0, 3))]
    if command == "convert" or rng.random() < 0.1:  # inspect has no --input-size / -o: a usage error
        fragments += [rng.choice(vocab["convert_good"]) for _ in range(rng.randint(0, 2))]
    for _ in range(rng.choice([0, 0, 1, 1, 1, 2])):
        pool = vocab["convert_bad"] if command == "convert" and rng.random() < 0.4 else vocab["bad"]
        fragments.append(rng.choice(pool))
    rng.shuffle(fragments)
    args = [token for fragment in fragments for token in fragment]
    roll = rng.random()
    if roll < 0.85:
        args.insert(0 if rng.random() < 0.7 else rng.randint(0, len(args)), vocab["tiny"])
    elif roll < 0.97:
        args.insert(0, rng.choice(vocab["bad_models"]))
    # else no MODEL at all. Each "OUT" becomes a fresh output directory, so that runs are independent.
    return [command, *(str(root / "out" / str(next(_output_ids))) if a == "OUT" else a for a in args)]


@contextlib.contextmanager
def _chdir(path: Path):
    """``contextlib.chdir`` (Python 3.11+) for Python 3.10."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _check_clean_exit(result, args: list[str]) -> None:
    shown = " ".join(repr(a) for a in args)
    assert result.exit_code in (0, 1, 2), f"{shown}\nexit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.output, f"{shown}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{shown}\n{type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    if result.exit_code == 1:
        assert "error:" in result.output, f"{shown}\n{result.output}"


def _check_world_intact(world: dict[str, Path]) -> None:
    root = world["root"]
    assert (world["cwd"] / "keep.txt").read_text() == "user data"  # -o . / -o '' never replaced the cwd
    assert (world["home"] / "keep.txt").read_text() == "user data"  # nor -o ~
    full = root / "full"  # replaced only by a run with --force, and then by a complete output
    assert (full / "keep.txt").is_file() and (full / "keep.txt").read_text() == "user data" or (full / "ghostify.json").is_file()
    assert (root / "tiny.py").read_text() == TINY_MODEL
    leftovers = [p for p in root.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name or "probe" in p.name]
    assert not leftovers, f"temporary directories left behind: {leftovers}"


def test_fuzz_convert_and_inspect(world) -> None:
    root = world["root"]

    @given(seed=st.integers(0, 2**32 - 1))
    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    def run(seed: int) -> None:
        args = command_line(root, random.Random(seed))
        with _chdir(world["cwd"]):  # and HOME in the scratch directory too: a broken guard harms nothing real
            result = runner.invoke(app, args, env={"HOME": str(world["home"])})
        _check_clean_exit(result, args)
        _check_world_intact(world)

    run()


# --- the inputs that used to break, one by one --------------------------------------------------


def _invoke(world, *args: str):
    with _chdir(world["cwd"]):
        result = runner.invoke(app, list(args), env={"HOME": str(world["home"])})
    _check_clean_exit(result, list(args))
    return result


def _tiny_spec(world) -> str:
    return f"{world['root'] / 'tiny.py'}:make"


@pytest.mark.parametrize("output", [".", "", "..", "~"])
def test_output_never_replaces_the_working_or_home_directory(world, output) -> None:
    result = _invoke(world, "convert", _tiny_spec(world), "--input-size", "8", "-o", output, "--force")
    assert result.exit_code == 1 and "refusing to write output" in result.output, result.output
    assert "Parameters" not in result.output  # refused before converting and measuring anything
    _check_world_intact(world)


def test_output_never_replaces_what_the_command_reads(world, tmp_path) -> None:
    # the directory holding the model file, or the checkpoint
    models = tmp_path / "models"
    models.mkdir()
    (models / "net.py").write_text(TINY_MODEL)
    result = _invoke(world, "convert", f"{models / 'net.py'}:make", "--input-size", "8", "-o", str(models), "--force")
    assert result.exit_code == 1 and "net.py, which this command reads" in result.output, result.output
    result = _invoke(world, "convert", _tiny_spec(world), "-c", str(models / "net.py"), "-o", str(tmp_path), "--force")
    assert result.exit_code == 1 and "net.py, which this command reads" in result.output, result.output
    assert (models / "net.py").read_text() == TINY_MODEL
    # the saved model that `compare` reads
    saved = tmp_path / "saved"
    assert _invoke(world, "convert", _tiny_spec(world), "--input-size", "8", "-o", str(saved)).exit_code == 0
    result = _invoke(world, "compare", _tiny_spec(world), str(saved), "--input-size", "8", "-o", str(saved), "--force")
    assert result.exit_code == 1 and "which this command reads" in result.output, result.output
    assert (saved / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("notes.txt", "exists and is not a directory"),
        ("notes.txt/sub", "is a file, not a directory"),
        ("full", "--force"),
        ("/proc/ghostify-out", "cannot write to /proc/ghostify-out"),
    ],
)
def test_bad_output_paths_fail_before_converting(world, output, message) -> None:
    target = output if output.startswith("/") else str(world["root"] / output)
    result = _invoke(world, "convert", _tiny_spec(world), "--input-size", "8", "-o", target)
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Parameters" not in result.output
    _check_world_intact(world)
    assert not Path("/proc/ghostify-out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input-size", "99999999999"], "could not be allocated"),
        (["--input-size", "3,99999999,99999999"], "could not be allocated"),
        (["--input-size", "3,²,8"], "--input-size must be S (a 3xSxS image"),
        (["--input-size", "0,32,32"], "every number >= 1"),
        (["--layer-ratio", "0=²"], "PATTERN=RATIO"),
        (["--dw-size", "101"], "dw_size must be an odd whole number from 1 to 9"),
        (["--dw-size", "1000001"], "dw_size must be an odd whole number from 1 to 9"),
        (["--include", "re:a{99999999999}"], "invalid regular expression"),
        (["--exclude", "re:" + "(" * 1000 + ")" * 1000], "invalid regular expression"),
    ],
)
def test_inputs_that_used_to_crash(world, args, message) -> None:
    result = _invoke(world, "convert", _tiny_spec(world), *args)
    assert result.exit_code == 1 and message in result.output, result.output


def test_huge_ratio_keeps_every_layer(world) -> None:
    result = _invoke(world, "convert", _tiny_spec(world), "--input-size", "8", "--ratio", "1000000", "--layers")
    assert result.exit_code == 0, result.output
    assert "0 eligible, 2 skipped" in result.output


def test_malformed_recipe_is_a_clean_error(world, tmp_path) -> None:
    out = tmp_path / "out"
    assert _invoke(world, "convert", _tiny_spec(world), "--input-size", "8", "-o", str(out)).exit_code == 0
    import ghostify
    from ghostify.errors import CheckpointError

    recipe = out / "ghostify.json"
    for broken in ("[]", '{"format": "ghostify.recipe", "format_version": "1"}',
                   '{"format": "ghostify.recipe", "plan": {"layers": [{"name": 1}]}}', "\udcff"):
        recipe.write_text(broken, errors="surrogateescape")
        with pytest.raises(CheckpointError):
            ghostify.load(out, base_model=_tiny())
