"""Zoo coverage: convert every model of a source with random weights and check that it still runs.

Each model runs in its own process (a crash, a hang or running out of memory stays with that
model), at ratio 2 on a small input. Per model: dense convs (``groups == 1`` ``Conv2d``), how
many were converted, whether the converted model runs and gives outputs of the same shapes, and
the error if not. Then the totals:

    python benchmarks/zoo.py --source torchvision
    python benchmarks/zoo.py --source timm --max-params 100 --json zoo-timm.json
    python benchmarks/zoo.py --source timm --filter 'nfnet*' --limit 20
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def model_names(source: str, pattern: str) -> list[str]:
    from ghostify.models import list_model_names

    return [name for name in list_model_names(source) if fnmatch.fnmatchcase(name, pattern)]


def check_one(spec: str, size: int, max_params: float) -> dict:
    """Convert ``spec`` and run both models once; the facts as a dict (run in a child process)."""
    import torch
    from torch import nn

    import ghostify

    torch.set_num_threads(1)
    start = time.perf_counter()
    row: dict = {"model": spec}
    model = ghostify.resolve_model(spec).model.eval()
    params = sum(p.numel() for p in model.parameters())
    row["params_m"] = round(params / 1e6, 2)
    if params > max_params * 1e6:
        return {**row, "skipped": f"more than {max_params:g} M parameters"}
    dense = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    row["dense_convs"] = len(dense)
    if not dense:  # nothing ghostify converts (video models: Conv3d only)
        return {**row, "converted": 0, "same_shapes": None}
    converted = ghostify.convert(model)
    row["converted"] = len(ghostify.get_plan(converted).converted)
    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    for side in (size, 224, 299):  # the smallest input the original model itself accepts
        x = torch.randn(2, channels, side, side)
        try:
            with torch.no_grad():
                before = model(x)
            break
        except Exception:
            if side == 299:
                raise
    row["input_size"] = side
    with torch.no_grad():
        after = converted(x)
    row["same_shapes"] = _shapes(before) == _shapes(after)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _shapes(output) -> object:
    import torch

    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if isinstance(output, dict):
        if "boxes" in output:  # detections: how many depends on the weights, their fields do not
            return sorted(output)
        return {key: _shapes(value) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return [_shapes(value) for value in output]
    return type(output).__name__


def run_all(args: argparse.Namespace) -> list[dict]:
    names = model_names(args.source, args.filter)[: args.limit]
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for index, name in enumerate(names, 1):
        spec = f"{args.source}:{name}"
        command = [sys.executable, __file__, "--one", spec, "--input-size", str(args.input_size), "--max-params", str(args.max_params)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"model": spec, "error": _last_line(done.stderr) or f"exit {done.returncode}"}
        except subprocess.TimeoutExpired:
            row = {"model": spec, "error": f"timed out after {args.timeout} s"}
        rows.append(row)
        status = row.get("skipped") or row.get("error") or f"{row['converted']}/{row['dense_convs']} convs, same shapes: {row['same_shapes']}"
        print(f"[{index}/{len(names)}] {spec}: {status}", flush=True)
    return rows


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def summary(rows: list[dict]) -> str:
    measured = [r for r in rows if "skipped" not in r]
    with_dense = [r for r in measured if r.get("dense_convs", 1) > 0]
    ok = [r for r in with_dense if r.get("same_shapes") and "error" not in r]
    zero = [r for r in ok if r["converted"] == 0]
    dense = sum(r.get("dense_convs", 0) for r in ok)
    converted = sum(r.get("converted", 0) for r in ok)
    failed = [r for r in with_dense if r not in ok]
    lines = [
        f"models: {len(rows)} ({len(rows) - len(measured)} skipped by size); with a dense Conv2d: {len(with_dense)}",
        f"converted and ran with the same output shapes: {len(ok)} of {len(with_dense)}"
        + (f" ({100 * len(ok) / len(with_dense):.1f} %)" if with_dense else ""),
        f"of those, with no conv converted: {len(zero)}" + (f" ({', '.join(r['model'] for r in zero[:10])}{', ...' if len(zero) > 10 else ''})" if zero else ""),
        f"dense convs converted in them: {converted} of {dense}" + (f" ({100 * converted / dense:.1f} %)" if dense else ""),
    ]
    lines += [f"FAILED {r['model']}: {r.get('error') or 'output shapes differ'}" for r in failed]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("timm", "torchvision"), default="torchvision")
    parser.add_argument("--filter", default="*", help="glob on model names")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-params", type=float, default=100.0, help="skip models with more parameters (millions)")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per model")
    parser.add_argument("--json", type=Path, help="also write every row here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one model, one JSON line
    args = parser.parse_args()
    if args.one:
        print(json.dumps(check_one(args.one, args.input_size, args.max_params)))
        return
    rows = run_all(args)
    print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
