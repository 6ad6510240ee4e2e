"""Run each bad input through the real CLI and write docs/bad-inputs.md from what it printed.

    python scripts/bad_inputs.py docs/bad-inputs.md
"""
import argparse as _argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

WORK = Path(tempfile.mkdtemp(prefix="ghostify-bad-inputs-"))
PY = sys.executable

TINY = "nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))"


def tiny():
    return eval(TINY)  # the model tiny.py builds: stem and output conv kept, the middle one converted

def setup():
    (WORK / "tiny.py").write_text(f"from torch import nn\n\n\ndef make():\n    return {TINY}\n")
    (WORK / "raises.py").write_text("def make():\n    raise RuntimeError('boom')\n")
    (WORK / "syntax.py").write_text("def make(:\n    return 1\n")
    (WORK / "not_a_model.py").write_text("def make():\n    return 3\n")
    (WORK / "needs_args.py").write_text("def make(width):\n    return None\n")
    (WORK / "empty.pth").write_text("")
    (WORK / "notes.txt").write_text("hello\n")
    (WORK / "full").mkdir(exist_ok=True)
    (WORK / "full" / "keep.txt").write_text("user data\n")
    (WORK / "ckpts").mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(tiny().state_dict(), WORK / "ckpts" / "tiny.pth")
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 1)).state_dict(), WORK / "other_model.pth")
    torch.save([1, 2, 3], WORK / "list.pth")
    torch.save({"state_dict": tiny().state_dict(), "args": _argparse.Namespace(lr=0.1)}, WORK / "with_args.pth")
    mod_dir = WORK / "gone"
    mod_dir.mkdir(exist_ok=True)
    (mod_dir / "trainer_lib.py").write_text("class Run:\n    pass\n")
    sys.path.insert(0, str(mod_dir))
    import trainer_lib
    torch.save({"state_dict": tiny().state_dict(), "run": trainer_lib.Run()}, WORK / "foreign_object.pth")
    (mod_dir / "trainer_lib.py").unlink()

CASES = [
    # (args, note, regex picking the line shown for exit 0)
    ("convert tiny.py:make -o notes.txt", "-o is an existing file", None),
    ("convert tiny.py:make -o notes.txt/out", "-o under a file", None),
    ("convert tiny.py:make -o full", "-o non-empty directory, no --force", None),
    ("convert tiny.py:make --input-size 8 -o /proc/ghostify-out", "-o unwritable location", None),
    ("convert tiny.py:make --input-size 8 -o . --force", "-o the current directory", None),
    ("convert tiny.py:make --input-size 8 -o '' --force", "-o empty string (= current directory)", None),
    ("convert tiny.py:make --input-size 8 -o .. --force", "-o a parent of the current directory", None),
    ("convert tiny.py:make --input-size 8 -c ckpts/tiny.pth -o ckpts --force", "-o the directory holding the checkpoint", None),
    ("convert tiny.py:make --input-size 3,32", "two numbers: C,H or H,W?", None),
    ("convert tiny.py:make --input-size 0,32,32", "", None),
    ("convert tiny.py:make --input-size 0,0,0", "", None),
    ("convert tiny.py:make --input-size 3,1,1", "input the model rejects", None),
    ("convert tiny.py:make --input-size 1,2,3,4", "", None),
    ("convert tiny.py:make --input-size abc", "", None),
    ("convert tiny.py:make --input-size 3,²,8", "unicode digit", None),
    ("convert tiny.py:make --input-size 3,99999,99999", "input too large to allocate", None),
    ("convert tiny.py:make --input-size 99999999999", "input size overflows", None),
    ("convert tiny.py:make --input-size 8 --ratio 1000000", "ratio larger than every conv: all kept", r"Conv layers"),
    ("convert tiny.py:make --ratio 0", "", None),
    ("convert tiny.py:make --ratio 1", "", None),
    ("convert tiny.py:make --ratio 1.5", "", None),
    ("convert tiny.py:make --ratio ''", "", None),
    ("convert tiny.py:make --min-channels 0", "", None),
    ("convert tiny.py:make --input-size 8 --min-channels 1000000000000", "every conv kept", r"Conv layers"),
    ("convert tiny.py:make --dw-size 2", "", None),
    ("convert tiny.py:make --dw-size 101", "huge cheap kernel", None),
    ("convert tiny.py:make --checkpoint ckpts", "checkpoint is a directory", None),
    ("convert tiny.py:make --checkpoint empty.pth", "empty file", None),
    ("convert tiny.py:make --checkpoint notes.txt", "text file", None),
    ("convert tiny.py:make --checkpoint list.pth", "a pickled list", None),
    ("convert tiny.py:make --checkpoint missing.pth", "", None),
    ("convert tiny.py:make --checkpoint ''", "", None),
    ("convert tiny.py:make --checkpoint other_model.pth", "checkpoint of another model", None),
    ("convert tiny.py:make --checkpoint with_args.pth", "pickled object, not trusted", None),
    ("convert tiny.py:make --input-size 8 --checkpoint with_args.pth --trust-checkpoint", "pickled object, trusted", r"^model:"),
    ("convert tiny.py:make --checkpoint foreign_object.pth --trust-checkpoint", "pickled object of a class not importable here", None),
    ("convert tiny.py:make --pretrained", "--pretrained with a user file model", None),
    ("convert raises.py:make", "model function raises", None),
    ("convert syntax.py:make", "model file with a syntax error", None),
    ("convert not_a_model.py:make", "function returns no nn.Module", None),
    ("convert needs_args.py:make", "function needs arguments", None),
    ("convert missing.py:make", "", None),
    ("convert tiny.py:build", "no such function", None),
    ("convert tiny.py:nn", "attribute that is not a function", None),
    ("convert tiny.py", "file without :function", None),
    ("convert ''", "empty MODEL", None),
    ("convert timm:", "", None),
    ("convert resnt50", "typo in a timm name", None),
    ("convert torchvision:resnet5", "", None),
    ("convert", "MODEL missing", None),
    ("inspect tiny.py:make --include 're:('", "", None),
    ("inspect tiny.py:make --include 're:a{99999999999}'", "regex repetition overflow", None),
    ("inspect tiny.py:make --include '['", "", None),
    ("inspect tiny.py:make --include '**'", "glob matching everything", r"Conversion plan"),
    ("inspect tiny.py:make --exclude layer99", "", None),
    ("inspect tiny.py:make --layer-ratio layer4", "", None),
    ("inspect tiny.py:make --layer-ratio =2", "", None),
    ("inspect tiny.py:make --layer-ratio 0=0", "", None),
    ("inspect tiny.py:make --layer-ratio 0=²", "unicode digit", None),
    ("convert tiny.py:make --variant foo", "", None),
    ("convert tiny.py:make --init ''", "", None),
    ("convert tiny.py:make --bogus", "unknown option", None),
    ("convert tiny.py:make --ratio", "missing value", None),
    ("inspect tiny.py:make -o out", "option of another command", None),
    ("convert tiny.py:make --input-size 8 --latency --device foo", "", None),
    ("convert tiny.py:make --input-size 8 --latency --device cuda", "no CUDA on this machine", None),
    ("compare tiny.py:make saved --input-size 8 -o saved --force", "-o the saved model compare reads", None),
    ("compare tiny.py:make notes.txt", "CONVERTED is not a directory", None),
    ("compare torchvision:resnet18 saved --input-size 8", "CONVERTED was made from another model", None),
    ("compare tiny.py:make saved --input-size 8 -c ckpts/tiny.pth", "ORIGINAL has other weights than saved/ records", r"^warning:"),
    ("sweep tiny.py:make --input-size 8 --save-models", "--save-models without -o", None),
    ("sweep tiny.py:make --ratios 2,x", "", None),
    ("sweep tiny.py:make --ratios ''", "", None),
]

def message(out: str, rc: int, pick: str | None) -> str:
    lines = [l.rstrip() for l in out.splitlines()]
    if rc == 1:
        start = next(i for i, l in enumerate(lines) if l.startswith("error:"))
        return " / ".join(l.strip() for l in lines[start:] if l.strip())
    if rc == 2:
        box = [l.strip("│ ").strip() for l in lines if l.startswith("│")]
        return " ".join(box)
    if pick:
        line = next(l for l in lines if re.search(pick, l))
        return re.sub(r"\s+", " ", line.strip("│┃ ").replace("│", "|")).strip()
    return lines[-1]

def cell(text: str) -> str:
    return text.replace("|", "\\|")

def main():
    setup()
    env = dict(os.environ, COLUMNS="200")
    subprocess.run([PY, "-m", "ghostify.cli", "convert", "tiny.py:make", "--input-size", "8", "-o", "saved", "--force"],
                   cwd=WORK, env=env, capture_output=True, check=True)
    rows = []
    for args, note, pick in CASES:
        argv = shlex.split(args)
        proc = subprocess.run([PY, "-m", "ghostify.cli", *argv], cwd=WORK, env=env, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out, (args, out)
        assert proc.returncode in (0, 1, 2), (args, out)
        shown = message(out, proc.returncode, pick).replace(str(WORK), "<scratch>")
        rows.append(f"| `ghostify {args}` | {cell(note)} | {proc.returncode} | {cell(shown)} |")
        print(proc.returncode, args, "->", shown[:150])
    assert (WORK / "full" / "keep.txt").exists() and (WORK / "ckpts" / "tiny.pth").exists() and (WORK / "saved" / "model.safetensors").exists()
    leftovers = [p for p in WORK.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name or "probe" in p.name]
    assert not leftovers, leftovers
    target = Path(sys.argv[1])
    # the calibration and distillation section (Ctrl-C rows, data folders) is kept as it was written
    kept = target.read_text().partition(RECOVERY_SECTION)[2] if target.is_file() else ""
    target.write_text(HEADER + "\n".join(rows) + "\n" + FOOTER + (f"\n{RECOVERY_SECTION}{kept}" if kept else ""))

RECOVERY_SECTION = "## Calibration and distillation"
HEADER = f"""# Bad inputs and what ghostify says

Every row was produced by running the command (`python -m ghostify.cli ...` with `COLUMNS=200`)
in a scratch directory holding `tiny.py` (`make()` returns
`{TINY}`), checkpoints
(`ckpts/tiny.pth`, `other_model.pth` for another model, `with_args.pth` holding an
`argparse.Namespace`, `foreign_object.pth` holding an object whose class is no longer importable,
`list.pth`, `empty.pth`), a text file `notes.txt`, a non-empty directory `full/` and a saved model
`saved/`. The message column is what the command printed: after `error:` for exit 1, typer's usage
error for exit 2, the relevant output line for exit 0. `<scratch>` stands for the scratch directory.
Regenerate with `python scripts/bad_inputs.py docs/bad-inputs.md`.

Exit codes: **0** worked, **1** a mistake ghostify explains in one message, **2** a malformed
command line (rejected by typer). No command printed a traceback, and after all of them the
scratch directory held no temporary (`.*.tmp-*`) directories and every input file was intact.

| command | case | exit | message |
| --- | --- | --- | --- |
"""

FOOTER = """
`tests/test_cli_fuzz.py` runs random combinations of these tokens (and pins the rows that used to
crash or destroy data); `tests/test_properties.py` checks that converted models round-trip through
`save` / `load` over the Conv2d configuration space.
"""


if __name__ == "__main__":
    main()
