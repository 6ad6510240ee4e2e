"""Read weights from a checkpoint file and put them into a model, with errors that say what to do.

Checkpoints come in many layouts: a bare state dict, one wrapped as ``{'state_dict': ...}`` or
``{'model': ...}`` next to training state (epoch, optimizer, best accuracy), keys prefixed with
``module.`` by ``DataParallel``. ``load_checkpoint`` turns all of them into one plain state dict.
By default files load with ``weights_only=True``, which refuses pickled Python objects, because
unpickling them can run arbitrary code; ``trusted=True`` lifts that for sources the user trusts.
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .errors import CheckpointError

# Keys under which training scripts commonly nest the state dict, in the order they are tried.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
DATA_PARALLEL_PREFIX = "module."
_MAX_NAMES_SHOWN = 8
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def load_checkpoint(path: str | Path, *, trusted: bool = False) -> dict[str, torch.Tensor]:
    """Load the state dict stored in ``path`` onto the CPU, whatever common layout it uses.

    Unwraps ``{'state_dict': ...}`` / ``{'model': ...}`` (also nested once, or a pickled whole
    ``nn.Module`` when ``trusted``) and strips a ``module.`` prefix that every key carries.
    ``.safetensors`` files are read with ``safetensors``. ``trusted=False`` loads with
    ``weights_only=True`` so that a file from an unknown source cannot run code.
    Raises ``CheckpointError`` saying how to fix the problem.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"no such file: {path}; check the path")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file (a directory?); give the path of the checkpoint file itself")
    if path.suffix == ".safetensors":
        loaded = _load_safetensors(path)
    else:
        loaded = _torch_load(path, trusted=trusted)
    state = _find_state_dict(loaded, path)
    return _strip_common_prefix(state, DATA_PARALLEL_PREFIX)


def load_state_dict_into(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy ``state`` into ``model`` strictly: every model tensor must be present with its shape.

    Shape mismatches are found before the model is touched. Missing or unexpected keys are judged
    by ``load_state_dict`` itself (it knows, e.g., that old BatchNorm checkpoints lack
    ``num_batches_tracked``); in that case the model may be partly loaded, so discard it.
    ``source`` names the checkpoint in error messages.
    """
    expected = model.state_dict()
    shape_mismatches = [
        (name, tuple(tensor.shape), tuple(expected[name].shape))
        for name, tensor in state.items()
        if name in expected
        and not isinstance(expected[name], nn.parameter.UninitializedTensorMixin)
        and tensor.shape != expected[name].shape
    ]
    if shape_mismatches:
        # Reported alongside, as torch would judge them; num_batches_tracked is filled in by BatchNorm.
        missing = [name for name in expected if name not in state and not name.endswith("num_batches_tracked")]
        unexpected = [name for name in state if name not in expected]
        raise CheckpointError(_mismatch_message(source, missing, unexpected, shape_mismatches))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise CheckpointError(
            f"could not load checkpoint {source} into the model: {err}\nIs this checkpoint for this model?"
        ) from err
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(_mismatch_message(source, result.missing_keys, result.unexpected_keys, []))


def _torch_load(path: Path, *, trusted: bool) -> Any:
    """``torch.load`` on the CPU, turning its many failure types into one actionable ``CheckpointError``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        if not trusted and "Weights only load failed" in str(err):
            raise CheckpointError(_refused_message(path, str(err))) from err
        raise CheckpointError(_unreadable_message(path, err)) from err
    except (ModuleNotFoundError, AttributeError) as err:
        # Only reachable when trusted: the pickle names a class this Python cannot import.
        raise CheckpointError(
            f"{path} holds pickled Python objects whose code is not importable here ({err}); "
            "install or put on PYTHONPATH the package that saved it, or re-save just the state dict "
            "with torch.save(model.state_dict(), PATH)"
        ) from err
    except Exception as err:  # torch raises KeyError, EOFError, RuntimeError, ... for non-checkpoints
        raise CheckpointError(_unreadable_message(path, err)) from err


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file (tensors only, so it is always safe to load)."""
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise CheckpointError(f"{path} is a safetensors file; install it with `pip install safetensors`") from err
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:
        raise CheckpointError(f"could not read {path} as a safetensors file ({type(err).__name__}: {err})") from err


def _refused_message(path: Path, torch_message: str) -> str:
    found = _UNSUPPORTED_GLOBAL.search(torch_message)
    culprit = f" (it refers to `{found.group(1)}`)" if found else ""
    return (
        f"{path} contains pickled Python objects, not only tensors{culprit}. Loading those can run "
        "arbitrary code, so it was refused. If you trust the source of this file, load it with "
        "--trust-checkpoint (trusted=True in Python)."
    )


def _unreadable_message(path: Path, err: BaseException) -> str:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else "no details"
    return (
        f"could not read {path} as a PyTorch checkpoint ({type(err).__name__}: {detail}); "
        "is it a file written by torch.save, complete and not corrupted?"
    )


def _is_state_dict(candidate: Any) -> bool:
    return (
        isinstance(candidate, Mapping)
        and len(candidate) > 0
        and all(isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in candidate.items())
    )


def _find_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Return the state dict in ``loaded``: itself, or nested (at most twice) under a known key."""
    candidate = loaded
    route = ""
    for _ in range(3):
        if isinstance(candidate, nn.Module):
            candidate = candidate.state_dict()
        if _is_state_dict(candidate):
            return candidate
        if not isinstance(candidate, Mapping):
            break
        key = next(
            (k for k in STATE_DICT_KEYS if isinstance(candidate.get(k), (Mapping, nn.Module))),
            None,
        )
        if key is None:
            break
        candidate = candidate[key]
        route += f"[{key!r}]"
    raise CheckpointError(
        f"no tensors found in {path}: expected a state dict (names -> tensors), or a dict holding one "
        f"under {' or '.join(repr(k) for k in STATE_DICT_KEYS)}. Found {_describe(loaded)}"
        + (f"; {route} holds {_describe(candidate)}" if route else "")
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        if not obj:
            return "an empty dict"
        return f"a dict with top-level keys {_preview([str(k) for k in obj])}"
    return f"a {type(obj).__name__}"


def _strip_common_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` from every key when all keys have it (as ``DataParallel`` saves them)."""
    if not all(name.startswith(prefix) for name in state):
        return state if isinstance(state, dict) else dict(state)
    stripped: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # module versions, used by e.g. BatchNorm when loading old checkpoints
        stripped._metadata = OrderedDict(metadata)  # type: ignore[attr-defined]
    consume_prefix_in_state_dict_if_present(stripped, prefix)
    return stripped


def _preview(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_SHOWN])
    more = len(names) - _MAX_NAMES_SHOWN
    return shown + (f", ... and {more} more" if more > 0 else "")


def _mismatch_message(
    source: str,
    missing: list[str],
    unexpected: list[str],
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    lines = [f"checkpoint {source} does not fit the model; is this checkpoint for this model?"]
    if missing:
        lines.append(f"  missing from the checkpoint ({len(missing)}): {_preview(list(missing))}")
    if unexpected:
        lines.append(f"  unexpected in the checkpoint ({len(unexpected)}): {_preview(list(unexpected))}")
    if shape_mismatches:
        shown = [
            f"{name} checkpoint {list(ckpt_shape)} vs model {list(model_shape)}"
            for name, ckpt_shape, model_shape in shape_mismatches[:_MAX_NAMES_SHOWN]
        ]
        more = len(shape_mismatches) - _MAX_NAMES_SHOWN
        lines.append(
            f"  shape mismatches ({len(shape_mismatches)}): {'; '.join(shown)}"
            + (f"; ... and {more} more" if more > 0 else "")
        )
        if len(shape_mismatches) <= 2 and not missing and not unexpected:  # e.g. classifier weight + bias
            lines.append("  (if only the classifier differs, set the number of classes to match the checkpoint)")
    return "\n".join(lines)
