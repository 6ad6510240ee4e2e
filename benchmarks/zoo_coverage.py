"""Zoo coverage: convert a named set of models with random weights and check that each still runs.

Each model runs in its own process (a crash, a hang or running out of memory stays with that
model, and ``--timeout`` limits it; the children are forked from a parent that has imported torch,
timm and ghostify once, ``--jobs`` of them at a time), at ratio 2 on the smallest input it accepts from a short list
(images from ``--input-size`` up; videos from 4 frames of 32x32 up; RAFT gets two images). Per
model: the convs it has by kind (``Conv1d``/``Conv2d``/``Conv3d``, dense = ``groups == 1``), how
many the plan finds eligible and converts, whether the converted model runs and returns outputs
of the same structure and shapes (detections: the same fields), the reason if not, and the seconds
it took (and, separately, the seconds ``ghostify.convert`` took). Then the totals, and ``--json`` /
``--markdown`` files with every row. ``--log FILE`` appends each row as it is measured and skips
the models already in FILE, so a run of the whole zoo (hours on a 2-core machine) can be stopped
and continued:

    python benchmarks/zoo_coverage.py --source torchvision                      # every family, video included
    python benchmarks/zoo_coverage.py --source torchvision --family video --family optical_flow
    python benchmarks/zoo_coverage.py --source timm --filter 'nfnet*' --limit 20 --json nf.json
    python benchmarks/zoo_coverage.py --all --max-params 100 --json zoo.json --markdown zoo.md
    python benchmarks/zoo_coverage.py --source timm --jobs 2 --log timm.jsonl --json timm.json  # resumable
    python benchmarks/zoo_coverage.py --all --convert-stem --convert-output --jobs 2 --log all.jsonl  # every eligible conv
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import statistics
import multiprocessing
import signal
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCES = ("timm", "torchvision")
TORCHVISION_FAMILIES = ("classification", "detection", "segmentation", "video", "optical_flow", "quantization")
KINDS = ("Conv1d", "Conv2d", "Conv3d")
VIDEO_SIZES = ((4, 32), (8, 64), (16, 112), (16, 224))  # (frames, side): the smallest a video model accepts
SIGNAL_LENGTHS = (256, 1024, 16000)  # 1-D models
POLICY_RULES = ("(skip_stem)", "(skip_output)", "(skip_pointwise)")  # kept by a default the user can switch off
CONVERT_SECONDS_TARGET = 60  # issue 7: no model takes longer to convert on a 2-core CPU


def torchvision_families() -> dict[str, str]:
    """torchvision model name -> family (the torchvision.models sub-package that builds it)."""
    import torchvision.models as models

    modules = {"classification": models, "detection": models.detection, "segmentation": models.segmentation,
               "video": models.video, "optical_flow": models.optical_flow, "quantization": models.quantization}
    return {name: family for family, module in modules.items() for name in models.list_models(module=module)}


def model_specs(source: str, pattern: str = "*", families: list[str] | None = None) -> list[tuple[str, str]]:
    """(spec, family) of every model of ``source`` whose name matches the glob ``pattern`` (and ``families``)."""
    from ghostify.models import list_model_names

    family_of = torchvision_families() if source == "torchvision" else {}
    specs = []
    for name in list_model_names(source):
        family = family_of.get(name, "timm" if source == "timm" else "classification")
        if fnmatch.fnmatchcase(name, pattern) and (not families or family in families):
            specs.append((f"{source}:{name}", family))
    return specs


# ----- one model (the child process) ---------------------------------------------------------------

def check_one(spec: str, family: str, size: int, max_params: float, options: dict | None = None) -> dict:
    """Convert ``spec`` (``options``: ``GhostConfig`` fields, e.g. ``skip_stem=False``) and run both models once;
    the facts as a dict."""
    import torch

    import ghostify
    from ghostify.ghost_module import CONV_TYPES, TRANSPOSED_CONV_TYPES, first_conv_dims

    torch.set_num_threads(1)
    start = time.perf_counter()
    row: dict = {"model": spec, "family": family}
    quick = _params_on_meta(spec)  # a 3B-parameter model is skipped without building its weights
    if quick is not None and quick > max_params * 1e6:
        return {**row, "params_m": round(quick / 1e6, 2), "skipped": f"more than {max_params:g} M parameters"}
    model = ghostify.resolve_model(spec).model.eval()
    params = sum(p.numel() for p in model.parameters())
    row["params_m"] = round(params / 1e6, 2)
    if params > max_params * 1e6:
        return {**row, "skipped": f"more than {max_params:g} M parameters"}
    def conv_counts(network) -> tuple[dict, dict]:
        found: Counter = Counter()
        dense: Counter = Counter()
        for module in network.modules():
            kind = next((f"Conv{d}d" for d, t in CONV_TYPES.items() if isinstance(module, t)), None)
            if kind is not None and not isinstance(module, TRANSPOSED_CONV_TYPES):
                found[kind] += 1
                dense[kind] += module.groups == 1
        return dict(found), dict(dense)

    row["convs_found"], row["convs_dense"] = conv_counts(model)
    if not sum(row["convs_dense"].values()):
        return {**row, "eligible": {}, "converted": {}, "same_outputs": None,
                "seconds": round(time.perf_counter() - start, 1), "note": "no dense conv"}
    convert_start = time.perf_counter()
    converted = ghostify.convert(model, **(options or {}))
    row["convert_seconds"] = round(time.perf_counter() - convert_start, 1)
    plan = ghostify.get_plan(converted)
    if plan.reparameterized:  # counted again in the fused form the plan names (a RepVGG block: one conv, not two)
        row["reparameterized_blocks"] = len(plan.reparameterized)
        row["convs_found"], row["convs_dense"] = conv_counts(ghostify.base_form(model, plan))
    row["eligible"] = dict(Counter(_kind(layer) for layer in plan.eligible if layer.kind == "module"))
    row["converted"] = dict(Counter(_kind(layer) for layer in plan.converted))
    row["kept_by_policy"] = dict(Counter(_kind(layer) for layer in plan.eligible
                                         if not layer.convert and layer.reason and layer.reason.endswith(POLICY_RULES)))
    row["kept_reasons"] = dict(Counter(_reason_kind(layer.reason) for layer in plan.skipped).most_common())
    row["trace"] = plan.trace
    inputs, before = _smallest_input(model, family, first_conv_dims(model), size)
    row["input"] = [list(x.shape) for x in inputs]
    with torch.no_grad():
        after = converted(*inputs)
    row["same_outputs"] = _structure(before) == _structure(after)
    if not row["same_outputs"]:
        row["error"] = f"outputs differ: {_structure(before)} vs {_structure(after)}"[:300]
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _kind(layer) -> str:
    return f"Conv{len(layer.kernel_size) if layer.kernel_size else 2}d"


def _reason_kind(reason: str | None) -> str:
    """A kept layer's reason without its numbers, so that like reasons count together."""
    text = reason or "?"
    for cut in (" (", ":", ";"):
        text = text.split(cut)[0]
    return text if not text.startswith("out_channels") else "out_channels below ratio / min_channels"


def _candidates(family: str, dims: int | None, channels: int, size: int, default_side: tuple[int, int] | None = None) -> list[tuple]:
    import torch

    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    if family == "optical_flow":  # RAFT: two images, sides divisible by 8
        return [(randn(1, 3, side, side), randn(1, 3, side, side)) for side in (64, 128, 224)]
    if dims == 3:
        return [(randn(2, channels, frames, side, side),) for frames, side in VIDEO_SIZES]
    if dims == 1:
        return [(randn(2, channels, length),) for length in SIGNAL_LENGTHS]
    sides = sorted({(size, size), (224, 224), (299, 299)} | ({default_side} if default_side else set()))
    return [(randn(2, channels, *side),) for side in sides]


def _smallest_input(model, family: str, dims: int | None, size: int) -> tuple[tuple, object]:
    """The first candidate input the original model runs on, and its output (the last error if none)."""
    import torch

    from ghostify.ghost_module import TRANSPOSED_CONV_TYPES, first_conv

    conv = first_conv(model)
    channels = conv.in_channels if conv is not None and not isinstance(conv, TRANSPOSED_CONV_TYPES) else 3
    error: Exception | None = None
    default = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")  # timm: the size it was built for
    default_side = tuple(default[-2:]) if default and len(default) == 3 else None
    if default_side:  # (a model may transform its input before the first conv: csatv2's DCT stem)
        channels = default[0]
    for inputs in _candidates(family, dims, channels, size, default_side):
        try:
            with torch.no_grad():
                return inputs, model(*inputs)
        except Exception as err:  # the model's own code rejects the size: try the next one
            error = err
    raise RuntimeError(f"the original model ran on none of the inputs tried: {type(error).__name__}: {error}")


def _structure(output) -> object:
    import torch

    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if isinstance(output, dict):
        if "boxes" in output:  # detections: how many depends on the weights, their fields do not
            return sorted(output)
        return {key: _structure(value) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return [_structure(value) for value in output]
    return type(output).__name__


def _params_on_meta(spec: str) -> int | None:
    """Parameters of a timm or torchvision model built on the meta device (no memory, no init); None if that fails."""
    import torch

    source, _, name = spec.partition(":")
    try:
        with torch.device("meta"):
            if source == "timm":
                import timm

                model = timm.create_model(name)
            else:
                import torchvision

                try:  # detection / segmentation models would fetch backbone weights
                    model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
                except TypeError:  # a model without a backbone
                    model = torchvision.models.get_model(name, weights=None)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - the full build below decides
        return None


# ----- the whole set (the parent process) ----------------------------------------------------------

def run_all(specs: list[tuple[str, str]], args: argparse.Namespace, done: dict[str, dict] | None = None) -> list[dict]:
    """One forked process per model, ``args.jobs`` at a time; rows in ``specs`` order.

    Rows already in ``done`` (from ``--log``) are reused; each new row is appended to ``args.log``
    as soon as it is measured."""
    done = dict(done or {})
    todo = [(index, spec, family) for index, (spec, family) in enumerate(specs, 1) if spec not in done]
    if done:
        print(f"{len(specs) - len(todo)} of {len(specs)} models already measured in {args.log}", flush=True)
    context = multiprocessing.get_context("fork")  # the parent's imports are shared, not repeated
    running: dict = {}  # process -> (index, spec, family, start, receiving end of the pipe)
    while todo or running:
        while todo and len(running) < args.jobs:
            index, spec, family = todo.pop(0)
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_child, args=(send, spec, family, args.input_size, args.max_params, _options(args)), daemon=True)
            process.start()
            send.close()
            running[process] = (index, spec, family, time.perf_counter(), receive)
        time.sleep(0.05)
        for process, (index, spec, family, start, receive) in list(running.items()):
            elapsed = time.perf_counter() - start
            row = receive.recv() if receive.poll() else None
            if row is None and process.is_alive() and elapsed <= args.timeout:
                continue
            if row is None:
                if process.is_alive():
                    os.kill(process.pid, signal.SIGKILL)
                    reason = f"timed out after {args.timeout} s"
                else:
                    reason = f"the process died (exit {process.exitcode}{', killed: out of memory?' if process.exitcode == -9 else ''})"
                row = {"model": spec, "family": family, "error": reason}
            process.join()
            receive.close()
            del running[process]
            row["wall_seconds"] = round(elapsed, 1)
            done[spec] = row
            if args.log:
                with args.log.open("a") as log:
                    log.write(json.dumps(row) + "\n")
            print(f"[{index}/{len(specs)}] {spec}: {_status(row)}", flush=True)
    return [done[spec] for spec, _ in specs]


def _child(send, spec: str, family: str, size: int, max_params: float, options: dict) -> None:
    """The forked process: measure one model, send its row (or the error) back to the parent."""
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        row = check_one(spec, family, size, max_params, options)
    except BaseException as err:  # noqa: BLE001 - any failure of the model is a row, not a crash
        row = {"model": spec, "family": family, "error": f"{type(err).__name__}: {err}".strip()[:300]}
    send.send(row)
    send.close()


def _options(args: argparse.Namespace) -> dict:
    """The conversion options the command line asks for (the defaults' stem and output rules switched off)."""
    return {**({"skip_stem": False} if args.convert_stem else {}), **({"skip_output": False} if args.convert_output else {})}


def read_log(path: Path | None) -> dict[str, dict]:
    """Rows already measured, from a ``--log`` file (JSON lines; a torn last line is ignored)."""
    rows: dict[str, dict] = {}
    if path is not None and path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["model"]] = row
    return rows


def _status(row: dict) -> str:
    if "skipped" in row:
        return f"skipped ({row['skipped']})"
    if "error" in row:
        return f"FAILED: {row['error']}"
    if row.get("same_outputs") is None:
        return row.get("note", "not run")
    convs = ", ".join(f"{kind} {row['converted'].get(kind, 0)}/{row['convs_dense'][kind]}" for kind in KINDS if row["convs_dense"].get(kind))
    return f"{convs} converted, same outputs, {row['seconds']} s"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _total(rows: list[dict], key: str, kind: str) -> int:
    return sum(row.get(key, {}).get(kind, 0) for row in rows)


def summary(rows: list[dict]) -> list[str]:
    """The totals, one fact per line."""
    tried = [r for r in rows if "skipped" not in r]
    no_conv = [r for r in tried if r.get("same_outputs") is None and "error" not in r]
    runnable = [r for r in tried if r not in no_conv]
    ok = [r for r in runnable if r.get("same_outputs") and "error" not in r]
    failed = [r for r in runnable if r not in ok]
    zero = [r for r in ok if not sum(r.get("converted", {}).values())]
    lines = [
        f"models: {len(rows)}; tried: {len(tried)} ({len(rows) - len(tried)} skipped by size); "
        f"without a dense conv (not run): {len(no_conv)}" + (f" ({', '.join(r['model'] for r in no_conv[:8])})" if no_conv else ""),
        f"converted and ran with identical output structure and shapes: {len(ok)} of {len(runnable)}"
        + (f" ({100 * len(ok) / len(runnable):.1f} %)" if runnable else "") + f"; failed: {len(failed)}",
        f"of those, with no conv converted: {len(zero)}" + (f" ({', '.join(r['model'] for r in zero[:10])}{', ...' if len(zero) > 10 else ''})" if zero else ""),
    ]
    for kind in KINDS:
        dense = _total(ok, "convs_dense", kind)
        if dense:
            converted, eligible = _total(ok, "converted", kind), _total(ok, "eligible", kind)
            models = sum(1 for r in ok if r.get("convs_dense", {}).get(kind))
            by_policy = _total(ok, "kept_by_policy", kind)
            lines.append(f"{kind}: {converted} converted of {eligible} eligible ({100 * converted / max(eligible, 1):.1f} %; "
                         f"{100 * converted / max(eligible - by_policy, 1):.1f} % of the {eligible - by_policy} not kept by the "
                         f"default stem / output / pointwise rules), {dense} dense found ({100 * converted / dense:.1f} % of dense) in {models} models")
    reasons: Counter = Counter()
    for row in ok:
        reasons.update(row.get("kept_reasons", {}))
    if reasons:
        lines.append("kept, commonest reasons: " + "; ".join(f"{reason} ({n})" for reason, n in reasons.most_common(6)))
    timed = [r for r in tried if "seconds" in r]
    if timed:
        slowest = max(timed, key=lambda r: r["seconds"])
        lines.append(f"seconds per model (build, convert, run): median {statistics.median(r['seconds'] for r in timed):.1f}, "
                     f"slowest {slowest['seconds']:.1f} ({slowest['model']}); all {sum(r.get('wall_seconds', 0) for r in rows):.0f} s wall")
    converts = [r for r in tried if "convert_seconds" in r]
    if converts:
        slow = sorted((r for r in converts if r["convert_seconds"] > CONVERT_SECONDS_TARGET), key=lambda r: -r["convert_seconds"])
        slowest = max(converts, key=lambda r: r["convert_seconds"])
        lines.append(f"seconds to convert: median {statistics.median(r['convert_seconds'] for r in converts):.1f}, slowest "
                     f"{slowest['convert_seconds']:.1f} ({slowest['model']}); over {CONVERT_SECONDS_TARGET} s: {len(slow)}"
                     + (" (" + ", ".join(f"{r['model']} {r['convert_seconds']:.0f} s" for r in slow) + ")" if slow else ""))
    lines += [f"FAILED {r['model']}: {r.get('error') or 'outputs differ'}" for r in failed]
    return lines


def markdown(rows: list[dict], lines: list[str]) -> str:
    table = ["| model | family | params (M) | input | dense convs | eligible | converted | same outputs | s | note |",
             "| --- | --- | ---: | --- | --- | --- | --- | --- | ---: | --- |"]

    def kinds(counts: dict | None) -> str:
        return ", ".join(f"{kind} {counts[kind]}" for kind in KINDS if counts and counts.get(kind)) or "-"

    for row in rows:
        inputs = " + ".join("x".join(map(str, shape)) for shape in row.get("input", [])) or "-"
        same = {True: "yes", False: "NO", None: "-"}[row.get("same_outputs")] if "error" not in row else "FAILED"
        note = row.get("skipped") or row.get("error") or row.get("note") or ""
        table.append(f"| {row['model']} | {row.get('family', '')} | {row.get('params_m', '-')} | {inputs} | "
                     f"{kinds(row.get('convs_dense'))} | {kinds(row.get('eligible'))} | {kinds(row.get('converted'))} | "
                     f"{same} | {row.get('seconds', '-')} | {note.replace('|', '/')} |")
    return "# Zoo coverage\n\n" + "\n".join(f"- {line}" for line in lines) + "\n\n" + "\n".join(table) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=SOURCES, action="append", help="timm or torchvision (repeatable; default torchvision)")
    parser.add_argument("--all", action="store_true", help="every model of timm and torchvision, every family")
    parser.add_argument("--filter", default="*", help="glob on model names, e.g. 'resnet*' (default: all)")
    parser.add_argument("--family", action="append", choices=TORCHVISION_FAMILIES, help="torchvision family (repeatable; default: all)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many models")
    parser.add_argument("--max-params", type=float, default=100.0, help="skip models with more parameters, in millions (default 100)")
    parser.add_argument("--input-size", type=int, default=64, help="smallest image side tried (default 64)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per model (default 600)")
    parser.add_argument("--convert-stem", action="store_true", help="convert the stem convs too (as ghostify convert --convert-stem)")
    parser.add_argument("--convert-output", action="store_true", help="convert the output convs too (as --convert-output)")
    parser.add_argument("--jobs", type=int, default=1, help="models measured at once, one process and one thread each (default 1)")
    parser.add_argument("--log", type=Path, help="append each row here as it is measured (JSON lines); models already in it are skipped")
    parser.add_argument("--json", type=Path, help="write every row here")
    parser.add_argument("--markdown", type=Path, help="write the summary and a table of every row here")
    args = parser.parse_args()
    sources = SOURCES if args.all else (args.source or ["torchvision"])
    specs = [spec for source in sources for spec in model_specs(source, args.filter, None if args.all else args.family)]
    specs = specs[: args.limit]
    import ghostify  # noqa: F401 - imported once here, shared by the forked children
    import timm  # noqa: F401
    import torchvision  # noqa: F401

    rows = run_all(specs, args, read_log(args.log))
    lines = summary(rows)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"summary": lines, "rows": rows}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(rows, lines))


if __name__ == "__main__":
    main()
