"""Counting and timing: parameters, size on disk, MACs (fvcore) and latency of a model.

MACs are counted with fvcore's ``FlopCountAnalysis``, which counts one fused multiply-add as
one "flop", so its numbers are multiply-accumulates (ResNet-50 at 224x224: 4.11 G). Ops fvcore
has no formula for are not counted; ``MacCount.unsupported_ops`` says which, so a report can
say what the total leaves out instead of hiding it.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import GhostifyError
from .formatting import INPUT_LAYOUTS
from .ghost_module import CONV_TYPES, TRANSPOSED_CONV_TYPES

ModelInput = torch.Tensor | tuple[torch.Tensor, ...]

EXAMPLE_INPUT_SEED = 0


def count_params(model: nn.Module) -> int:
    """Number of parameters; a parameter shared by several modules is counted once."""
    return sum(p.numel() for p in model.parameters())


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the distinct tensors of ``model.state_dict()``: about what a safetensors file holds.

    Parameters and buffers (BatchNorm statistics, a ghost module's ``out_index``) both count;
    a tensor registered under several names counts once.
    """
    seen: set[Any] = set()
    total = 0
    for name, tensor in model.state_dict(keep_vars=True).items():
        if not isinstance(tensor, torch.Tensor):  # get_extra_state() payloads
            continue
        if tensor.device.type == "meta" or tensor.numel() == 0:
            key: Any = ("unshared", name)
        else:
            key = (
                tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype,
            )
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def check_runs(model: nn.Module, inputs: torch.Tensor) -> None:
    """Run ``model`` once in eval mode; a failure becomes a ``GhostifyError`` about the input size."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(inputs)
    except Exception as err:  # the model's own code raises anything: all mean "wrong input"
        first_line = (str(err).splitlines() or [""])[0][:300]
        size = ",".join(map(str, inputs.shape[1:]))
        layout = INPUT_LAYOUTS.get(inputs.dim() - 1, "C,H,W")
        raise GhostifyError(
            f"the model failed on an input of size {size} ({layout}) ({type(err).__name__}: {first_line}). "
            f"Pass --input-size {layout} (input_size= in Python) matching what the model expects."
        ) from None
    finally:
        model.train(was_training)


def example_input(input_size: Sequence[int], batch_size: int = 1) -> torch.Tensor:
    """A deterministic random input of shape ``(batch_size, *input_size)`` (same values every call)."""
    dims = (batch_size, *input_size)
    if not dims[1:] or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise GhostifyError(
            f"input size must be whole numbers >= 1 such as (3, 224, 224) and batch size >= 1, "
            f"got input_size={tuple(input_size)!r}, batch_size={batch_size!r}"
        )
    generator = torch.Generator().manual_seed(EXAMPLE_INPUT_SEED)
    try:
        return torch.randn(dims, generator=generator)
    except (RuntimeError, MemoryError, OverflowError) as err:  # "can't allocate memory", "size ... overflowed"
        gib = math.prod(dims) * 4 / 2**30
        raise GhostifyError(
            f"an input of size {'x'.join(map(str, dims))} ({gib:,.1f} GiB of float32) could not be allocated "
            f"({type(err).__name__}); pass a smaller --input-size (input_size= in Python)"
        ) from None


def _as_args(inputs: ModelInput) -> tuple[torch.Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


@dataclass
class MacCount:
    """MACs of one forward pass, in total and per module (qualified names, ``""`` is the model).

    ``by_module`` of a module includes its submodules; ``by_module_operator`` splits it by fvcore
    operator (``conv``, ``batch_norm``, ...). ``unsupported_ops`` maps an op fvcore has no formula
    for (``aten::add_``, ``aten::index_select``, ...) to how often it ran uncounted.
    ``conv_modules`` names the model's conv modules (``nn.Conv1d``/``2d``/``3d`` and transposed; see ``of_layer``).
    """

    total: int
    by_module: dict[str, int]
    unsupported_ops: dict[str, int]
    by_operator: dict[str, int] = field(default_factory=dict)
    by_module_operator: dict[str, dict[str, int]] = field(default_factory=dict)
    conv_modules: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def operator_macs(self, module: str, operator: str) -> int:
        """MACs of fvcore operator ``operator`` (``"conv"``, ...) inside ``module`` and its submodules."""
        return self.by_module_operator.get(module, {}).get(operator, 0)

    def of_layer(self, module: str) -> int | None:
        """MACs of the layer at ``module``, or None if fvcore does not know that name.

        A conv module (``nn.Conv2d``, ``nn.Conv1d``, ...) costs its convolution alone; ops it runs on its own weights do not
        count (timm's ``StdConv2d`` / ``ScaledStdConv2d`` standardise the weight with a
        ``batch_norm`` in every forward pass, which fvcore counts inside the module: see
        ``weight_op_macs``). Any other module (a ghost module) costs everything fvcore counts in it.
        """
        if module not in self.by_module:
            return None
        if module in self.conv_modules:
            return self.operator_macs(module, "conv")
        return self.by_module[module]

    def weight_op_macs(self, module: str) -> int:
        """MACs fvcore counts in ``module`` beyond ``of_layer``: a conv's ops on its own weights."""
        layer = self.of_layer(module)
        return 0 if layer is None else self.by_module[module] - layer


_CONV_MODULES = (*CONV_TYPES.values(), *TRANSPOSED_CONV_TYPES)


def _flop_count_analysis() -> type:
    # Importing fvcore.nn scripts a few loss functions, which newer torch warns about on every import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis
    return FlopCountAnalysis


def count_macs(model: nn.Module, example_input: ModelInput) -> MacCount:
    """MACs of ``model(example_input)`` in eval mode, counted by fvcore (one multiply-add = one MAC).

    Eval mode so BatchNorm and dropout count as they run at inference; the model's training flag
    is restored afterwards. fvcore's warnings are silenced: ``unsupported_ops`` carries them.
    """
    analysis_type = _flop_count_analysis()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings from torch.jit.trace
            analysis = analysis_type(model, _as_args(example_input))
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            try:
                total = analysis.total()
            except Exception as err:  # jit tracing raises many types; any means "cannot count"
                first_line = (str(err).splitlines() or [""])[0][:300]
                raise GhostifyError(
                    f"fvcore could not trace the model to count MACs ({type(err).__name__}: {first_line}). "
                    "The model must run on the example input and return tensors (or tuples/dicts of them)."
                ) from err
            return MacCount(
                total=int(total),
                by_module={name: int(v) for name, v in analysis.by_module().items()},
                unsupported_ops=dict(analysis.unsupported_ops()),
                by_operator={name: int(v) for name, v in analysis.by_operator().items()},
                by_module_operator={
                    name: {op: int(v) for op, v in ops.items() if v}
                    for name, ops in analysis.by_module_and_operator().items()
                },
                conv_modules=[name for name, module in model.named_modules() if isinstance(module, _CONV_MODULES)],
            )
    finally:
        model.train(was_training)


@dataclass
class LatencyStats:
    """Wall-clock time of one forward pass over ``repeats`` timed runs, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    device: str
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> LatencyStats:
        return cls(**payload)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s first parameter or buffer lives (CPU for a model without tensors)."""
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; ``GhostifyError`` if it is malformed or not present here."""
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise GhostifyError(f"unknown device {device!r} ({err}); use cpu, cuda or cuda:N") from None
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise GhostifyError(f"device {device!r} asked for, but CUDA is not available on this machine; use --device cpu")
        if target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        elif target.index >= torch.cuda.device_count():
            raise GhostifyError(
                f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s); "
                "use cuda:0 or --device cpu"
            )
    elif target.type == "mps" and not torch.backends.mps.is_available():
        raise GhostifyError(f"device {device!r} asked for, but MPS is not available on this machine; use --device cpu")
    return target


def _same_device(actual: torch.device, target: torch.device) -> bool:
    if actual.type != target.type:
        return False
    return actual.index == target.index or target.type != "cuda"


def _on_device(model: nn.Module, target: torch.device) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return all(_same_device(t.device, target) for t in tensors)


def _synchronize(target: torch.device) -> None:
    if target.type == "cuda":
        torch.cuda.synchronize(target)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of already sorted values, ``q`` in [0, 100]."""
    position = (len(sorted_values) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def measure_latencies(
    models: Sequence[nn.Module],
    example_input: ModelInput,
    *,
    warmup: int = 3,
    repeats: int = 20,
    device: str | torch.device = "cpu",
) -> list[LatencyStats]:
    """Time several models on the same input, interleaving their runs so drift hits all alike.

    Each timed run is one forward pass in eval mode under ``torch.inference_mode``, bracketed by
    ``torch.cuda.synchronize`` on CUDA. A model not already on ``device`` is timed on a moved
    copy, so the caller's model stays where it is; training flags are restored.
    """
    times, target, batch_size = time_interleaved(models, example_input, warmup=warmup, repeats=repeats, device=device)
    return [latency_stats(samples, str(target), batch_size) for samples in times]


def latency_stats(samples_ms: Sequence[float], device: str, batch_size: int) -> LatencyStats:
    """Median and p10/p90 of timed runs (milliseconds)."""
    ordered = sorted(samples_ms)
    return LatencyStats(median_ms=statistics.median(ordered), p10_ms=_percentile(ordered, 10),
                        p90_ms=_percentile(ordered, 90), repeats=len(ordered), device=device, batch_size=batch_size)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation) of ``values``."""
    return _percentile(sorted(values), q)


def time_interleaved(
    models: Sequence[nn.Module],
    example_input: ModelInput,
    *,
    warmup: int = 3,
    repeats: int = 20,
    device: str | torch.device = "cpu",
) -> tuple[list[list[float]], torch.device, int]:
    """The milliseconds of every timed run of each model (run ``r`` of every model side by side), the device
    and the batch size; see ``measure_latencies``."""
    for label, value, least in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise GhostifyError(f"{label} must be a whole number >= {least}, got {value!r}")
    target = resolve_device(device)
    args = tuple(t.to(target) for t in _as_args(example_input))
    batch_size = int(args[0].shape[0]) if args and args[0].dim() > 0 else 1

    runners: list[nn.Module] = []
    restore: list[tuple[nn.Module, bool]] = []
    for model in models:
        runner = model if _on_device(model, target) else copy.deepcopy(model).to(target)
        restore.append((runner, runner.training))
        runners.append(runner.eval())

    times: list[list[float]] = [[] for _ in runners]
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for runner in runners:
                    runner(*args)
            for repeat in range(repeats):
                order = range(len(runners)) if repeat % 2 == 0 else reversed(range(len(runners)))
                for index in order:
                    _synchronize(target)
                    start = time.perf_counter()
                    runners[index](*args)
                    _synchronize(target)
                    times[index].append((time.perf_counter() - start) * 1000.0)
    finally:
        for runner, was_training in restore:
            runner.train(was_training)

    return times, target, batch_size


def measure_latency(
    model: nn.Module,
    example_input: ModelInput,
    *,
    warmup: int = 3,
    repeats: int = 20,
    device: str | torch.device = "cpu",
) -> LatencyStats:
    """Median and p10/p90 wall-clock time of one forward pass of ``model`` on ``device``.

    ``device="cuda"`` on a machine without CUDA raises ``GhostifyError`` (use ``device="cpu"``).
    """
    return measure_latencies([model], example_input, warmup=warmup, repeats=repeats, device=device)[0]


def observe_modules(model: nn.Module, names: Sequence[str], example_input: ModelInput,
                    record: Callable[[str, tuple, Any], None]) -> None:
    """Run ``model`` once (eval mode, no gradients; its training flag restored) and call
    ``record(name, args, output)`` at every call of each named module."""
    hooks = []
    for name in names:
        def hook(module: nn.Module, args: tuple, output: Any, name: str = name) -> None:
            record(name, args, output)

        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*_as_args(example_input))
    finally:
        model.train(was_training)
        for hook_handle in hooks:
            hook_handle.remove()


def layer_macs(model: nn.Module, plan: Any, example_input: ModelInput) -> dict[str, tuple[int, int]]:
    """Per conv layer of ``plan`` (a ``ConversionPlan`` of the unconverted ``model``): MACs now and as planned.

    One forward pass records the output size of every call of each conv; the ghost MACs follow
    from the module's shape (primary conv to ``ceil(n/s)`` maps, depthwise cheap conv with a ``d``,
    ``d x d`` or ``d x d x d`` kernel), so ``inspect`` can show what a plan saves without converting
    anything. Kept layers cost the same. A transposed conv costs its kernel at every *input* position.
    """
    positions: dict[str, int] = {}  # output positions (input positions for a transposed conv), all calls
    transposed = {name for name, module in model.named_modules() if isinstance(module, TRANSPOSED_CONV_TYPES)}
    dims = {layer.name: len(layer.kernel_size) for layer in plan.layers if layer.kind == "module"}

    def record(name: str, args: tuple, output: torch.Tensor) -> None:
        spatial = (args[0] if name in transposed else output).shape[-dims[name]:]
        positions[name] = positions.get(name, 0) + math.prod(spatial)

    observe_modules(model, list(dims), example_input, record)
    result = {}
    for layer in plan.layers:
        if layer.name not in positions:
            continue
        if layer.name in transposed:  # weight (in, out / groups, *kernel)
            per_position = layer.out_channels // layer.groups * math.prod(layer.kernel_size)
            before = positions[layer.name] * layer.in_channels * per_position
            result[layer.name] = (before, before)
            continue
        per_position = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
        before = positions[layer.name] * layer.out_channels * per_position
        after = before
        if layer.convert:
            intrinsic = layer.intrinsic_channels
            dw_volume = plan.config.dw_size ** len(layer.kernel_size)
            after = positions[layer.name] * (intrinsic * per_position + intrinsic * (layer.ratio - 1) * dw_volume)
        result[layer.name] = (before, after)
    return result
