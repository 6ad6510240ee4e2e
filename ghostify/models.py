"""Build a model from a spec string, whatever its source, behind one verb: ``resolve_model(spec)``.

Spec forms::

    timm:NAME  or bare NAME      a timm model (timm.create_model)
    torchvision:NAME             a torchvision model (torchvision.models.get_model)
    path/to/file.py:function     the nn.Module returned by calling ``function()`` from that file

Sources live in ``MODEL_SOURCES`` (prefix -> ``ModelSource``); ``register_model_source`` plugs in a
new one without touching ``resolve_model``. Unknown names list close matches, so a typo is one
retry away. Models are built under a fixed seed, so random weights are the same on every build.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import inspect
import itertools
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from .checkpoint import load_checkpoint, load_state_dict_into
from .errors import ConfigError, ModelSpecError
from .formatting import INPUT_LAYOUTS, display_path
from .ghost_module import conv_dims, first_conv, first_conv_dims

SPEC_HINT = "use timm:NAME, torchvision:NAME or path/to/file.py:function"
DEFAULT_SEED = 0  # the seed models are built under: random weights are reproducible
_MAX_SUGGESTIONS = 5
_user_module_ids = itertools.count()


@dataclass
class ResolvedModel:
    """A built model and where it and its weights came from (for logs and reports)."""

    model: nn.Module
    spec: str  # canonical: "timm:resnet50", "torchvision:resnet50", "/abs/path/file.py:make_model"
    source: str  # "timm" | "torchvision" | "file"
    pretrained: bool
    checkpoint: str | None
    seed: int | None = None  # the seed the random weights were drawn with; None for loaded weights

    @property
    def weights_note(self) -> str:
        """Human-readable origin of the weights, e.g. ``"weights from ckpt.pth"``."""
        if self.checkpoint is not None:
            return f"weights from {display_path(self.checkpoint)}"
        if self.pretrained:
            return f"pretrained {self.source} weights"
        seed = f"seed {self.seed}, " if self.seed is not None else ""
        return f"random weights ({seed}no --checkpoint given)"


# create(name, pretrained=..., num_classes=...) -> nn.Module; list_names() -> names for suggestions.
ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSource:
    """How to build the models of one source and list their names (for "did you mean")."""

    create: ModelFactory
    list_names: Callable[[], list[str]]


MODEL_SOURCES: dict[str, ModelSource] = {}


def register_model_source(prefix: str, list_names: Callable[[], list[str]]) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make ``prefix:NAME`` specs build models with the decorated function."""

    def register(create: ModelFactory) -> ModelFactory:
        MODEL_SOURCES[prefix] = ModelSource(create=create, list_names=list_names)
        return create

    return register


def resolve_model(
    spec: str,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    trust_checkpoint: bool = False,
    num_classes: int | None = None,
    seed: int = DEFAULT_SEED,
) -> ResolvedModel:
    """Build the model ``spec`` names, then load ``checkpoint`` into it if one is given.

    ``pretrained`` downloads the source's default weights (timm / torchvision only; it needs a
    network). ``trust_checkpoint`` allows a checkpoint holding pickled Python objects (it can
    run code). ``num_classes`` sets the classifier size (timm / torchvision only).
    The model is built with torch's CPU generator seeded with ``seed`` (the caller's random state
    is restored afterwards), so random weights, used when there is neither checkpoint nor
    pretrained weights, are the same on every build; ``ResolvedModel.seed`` records it then.
    Raises ``ModelSpecError`` or ``CheckpointError`` with a message saying how to fix the input.
    """
    if pretrained and checkpoint is not None:
        raise ModelSpecError(
            "pass either pretrained weights or a checkpoint, not both: the checkpoint would replace "
            "every pretrained weight"
        )
    source, name = _split_spec(spec)
    # Read the checkpoint first: a wrong path should fail before a slow model build.
    state = load_checkpoint(checkpoint, trusted=trust_checkpoint) if checkpoint is not None else None
    with torch.random.fork_rng(devices=[]):  # the caller's CPU random state comes back afterwards
        torch.random.default_generator.manual_seed(seed)  # CPU only: manual_seed() would also reseed CUDA
        model = MODEL_SOURCES[source].create(name, pretrained=pretrained, num_classes=num_classes)
    if state is not None:
        load_state_dict_into(model, state, source=str(checkpoint))
    random_weights = state is None and not pretrained
    return ResolvedModel(
        model=model,
        spec=_join_spec(source, name),
        source=source,
        pretrained=pretrained,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        seed=seed if random_weights else None,
    )


def canonical_spec(spec: str) -> str:
    """``spec`` as ``ResolvedModel.spec`` writes it (``timm:NAME``, ``torchvision:NAME``,
    ``/absolute/path/file.py:function``), without building the model."""
    return _join_spec(*_split_spec(spec))


def model_file(spec: str) -> Path | None:
    """The absolute path of the file a ``path/to/file.py:function`` spec names; None for other sources."""
    source, name = _split_spec(spec)
    return Path(name.rpartition(":")[0]) if source == "file" else None


def _join_spec(source: str, name: str) -> str:
    return name if source == "file" else f"{source}:{name}"


def list_model_names(source: str = "timm") -> list[str]:
    """Names that ``source:NAME`` accepts (empty for sources without a fixed list, like files)."""
    if source not in MODEL_SOURCES:
        raise ModelSpecError(f"unknown model source {source!r}; known sources: {', '.join(MODEL_SOURCES)}")
    return MODEL_SOURCES[source].list_names()


def _split_spec(spec: str) -> tuple[str, str]:
    """Split ``spec`` into (source, name); file names come back as an absolute ``path:function``."""
    spec = spec.strip()
    if not spec:
        raise ModelSpecError(f"empty model spec; {SPEC_HINT}")
    prefix, has_colon, rest = spec.partition(":")
    if has_colon and prefix in MODEL_SOURCES:
        source, name = prefix, rest
    else:
        path_part, has_function, _ = spec.rpartition(":")
        if has_function and path_part.endswith(".py"):
            source, name = "file", spec
        elif spec.endswith(".py"):
            raise ModelSpecError(
                f"{spec!r} names a file but no function; write {spec}:FUNCTION, where FUNCTION() returns the model"
            )
        elif has_colon and prefix not in ("hf-hub", "hf_hub"):  # timm reads hf-hub:ORG/NAME itself
            raise ModelSpecError(
                f"unknown model source {prefix!r} in {spec!r}; known sources: {', '.join(MODEL_SOURCES)}. {SPEC_HINT}"
            )
        else:
            source, name = "timm", spec
    if not name:
        raise ModelSpecError(f"{spec!r} names no model; {SPEC_HINT}")
    if source == "file":
        path_text, _, function_name = name.rpartition(":")
        if not function_name:
            raise ModelSpecError(f"{spec!r} names no function after the ':'; {SPEC_HINT}")
        name = f"{Path(path_text).expanduser().resolve()}:{function_name}"
    return source, name


def _unknown_name_error(source: str, name: str, extra_suggestions: Sequence[str] = ()) -> ModelSpecError:
    names = MODEL_SOURCES[source].list_names()
    suggestions = [*extra_suggestions, *_close_names(name, names)][:_MAX_SUGGESTIONS]
    did_you_mean = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    return ModelSpecError(f"unknown {source} model {name!r}.{did_you_mean} ({SPEC_HINT})")


def _close_names(name: str, names: list[str]) -> list[str]:
    """Up to 5 names like ``name``: closest spellings first, then names containing it."""
    lowered = name.lower()
    close = difflib.get_close_matches(lowered, names, n=_MAX_SUGGESTIONS, cutoff=0.6)
    containing = sorted((n for n in names if lowered in n.lower()), key=len)
    return list(dict.fromkeys([*close, *containing]))[:_MAX_SUGGESTIONS]


def _download_error(source: str, name: str, err: BaseException) -> ModelSpecError:
    return ModelSpecError(
        f"pretrained weights for {source}:{name} could not be downloaded (no network?): "
        f"{type(err).__name__}: {err}. Pass --checkpoint PATH with weights you have instead."
    )


HUB_HOST = "huggingface.co"
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _host_resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_offline_unless_reachable(pretrained: bool) -> Iterator[None]:
    """Use only the local Hugging Face cache when the hub's name does not resolve.

    Without this, huggingface_hub retries a dead network for about a minute before failing;
    offline mode still loads weights that are already cached. Behind a proxy, name lookups
    say nothing about reachability, so nothing changes there.
    """
    if not pretrained or any(os.environ.get(v) for v in _PROXY_VARIABLES) or _host_resolves(HUB_HOST):
        yield
        return
    from huggingface_hub import constants

    previous, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _list_timm_names() -> list[str]:
    import timm

    return timm.list_models()


def _list_torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models()


@register_model_source("timm", list_names=_list_timm_names)
def _create_timm_model(name: str, *, pretrained: bool, num_classes: int | None) -> nn.Module:
    import timm

    if not name.startswith(("hf-hub:", "hf_hub:")) and not timm.is_model(name):
        in_torchvision = name in _list_torchvision_names()
        raise _unknown_name_error("timm", name, [f"torchvision:{name}"] if in_torchvision else [])
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        with _hub_offline_unless_reachable(pretrained):
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as err:  # huggingface_hub and urllib errors are OSErrors
        if pretrained:
            raise _download_error("timm", name, err) from err
        raise ModelSpecError(f"could not create timm:{name}: {type(err).__name__}: {err}") from err
    except (RuntimeError, ValueError, TypeError) as err:
        raise ModelSpecError(f"could not create timm:{name}: {err}") from err


@register_model_source("torchvision", list_names=_list_torchvision_names)
def _create_torchvision_model(name: str, *, pretrained: bool, num_classes: int | None) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise _unknown_name_error("torchvision", name)
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if not pretrained and "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(name)).parameters:
        kwargs["weights_backbone"] = None  # detection/segmentation builders would download ImageNet backbone weights
    try:
        return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    except OSError as err:  # urllib.error.URLError is an OSError
        if pretrained:
            raise _download_error("torchvision", name, err) from err
        raise ModelSpecError(f"could not create torchvision:{name}: {type(err).__name__}: {err}") from err
    except (RuntimeError, ValueError, TypeError) as err:  # e.g. num_classes that the weights do not have
        raise ModelSpecError(f"could not create torchvision:{name}: {err}") from err


@register_model_source("file", list_names=list)
def _create_model_from_file(name: str, *, pretrained: bool, num_classes: int | None) -> nn.Module:
    path_text, _, function_name = name.rpartition(":")
    path = Path(path_text)
    if pretrained:
        raise ModelSpecError(
            f"pretrained weights exist only for timm and torchvision models; for {name} pass --checkpoint PATH"
        )
    if num_classes is not None:
        raise ModelSpecError(f"num_classes applies to timm and torchvision models; set it inside {name}")
    if not path.is_file():
        raise ModelSpecError(f"no such file: {path}; check the path in the model spec ({SPEC_HINT})")
    module = _import_file(path)
    factory = getattr(module, function_name, None)
    if factory is None:
        defined_here = [
            n for n, v in vars(module).items()
            if callable(v) and getattr(v, "__module__", None) == module.__name__ and not n.startswith("_")
        ]
        available = f"; it defines: {', '.join(defined_here)}" if defined_here else ""
        raise ModelSpecError(f"{path} has no function {function_name!r}{available}")
    if not callable(factory):
        raise ModelSpecError(f"{path}:{function_name} is a {type(factory).__name__}, not a function returning a model")
    _check_callable_without_arguments(factory, name)
    try:
        model = factory()
    except Exception as err:
        raise ModelSpecError(f"{name}() raised {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"{name}() returned {type(model).__name__!r}, not a torch.nn.Module; make it return the model"
        )
    return model


def _check_callable_without_arguments(factory: Callable[..., object], name: str) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and some C callables have no signature: just try the call
        return
    required = [
        p.name for p in signature.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if required:
        raise ModelSpecError(
            f"{name} is called with no arguments but requires {', '.join(required)}; "
            "give them defaults or wrap it in a function without parameters"
        )


def _import_file(path: Path) -> ModuleType:
    """Import ``path`` as a fresh module; its folder is on ``sys.path`` meanwhile for sibling imports."""
    safe_stem = re.sub(r"\W", "_", path.stem)
    module_name = f"ghostify_user_model_{next(_user_module_ids)}_{safe_stem}"
    import_spec = importlib.util.spec_from_file_location(module_name, path)
    if import_spec is None or import_spec.loader is None:
        raise ModelSpecError(f"cannot import {path} as Python; is it a .py file?")
    module = importlib.util.module_from_spec(import_spec)
    sys.modules[module_name] = module  # dataclasses, pickling and typing look the module up here
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        import_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise ModelSpecError(f"could not import {path}: {type(err).__name__}: {err}") from err
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


# the default size (without channels) of a model's inputs, by the spatial dims of its first conv
_DEFAULT_EXTENT = {1: (224,), 2: (224, 224), 3: (16, 112, 112)}


def default_input_size(model: nn.Module) -> tuple[int, ...]:
    """The input size (without the batch) a model expects: timm's ``pretrained_cfg['input_size']``
    (or a ``default_cfg``'s) when it has one; else by its first conv: 3x224x224 for an image model
    (``Conv2d``, or no conv), ``(C, 224)`` for a ``Conv1d`` and ``(C, 16, 112, 112)`` (frames, height,
    width) for a ``Conv3d``, ``C`` being that conv's input channels."""
    config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = config.get("input_size") if isinstance(config, dict) else None
    if isinstance(size, (tuple, list)) and len(size) in INPUT_LAYOUTS and all(isinstance(v, int) and v > 0 for v in size):
        return tuple(int(v) for v in size)
    conv = first_conv(model)
    dims = conv_dims(conv) if conv is not None else None
    if dims in (1, 3):
        return (int(conv.in_channels), *_DEFAULT_EXTENT[dims])
    return (3, 224, 224)


def input_size_for(model: nn.Module, given: Sequence[int] | None = None) -> tuple[int, ...]:
    """The input size (without the batch) to run ``model`` at: ``given`` (``--input-size``, parsed by
    ``formatting.parse_input_size``) if it has the layout the model's first conv takes (C,L for a
    ``Conv1d``, C,H,W for a ``Conv2d``, C,T,H,W for a ``Conv3d``), else ``default_input_size(model)``
    when nothing is given. ``ConfigError`` with an example that fits when ``given`` does not."""
    if given is None:
        return default_input_size(model)
    given = tuple(int(v) for v in given)
    dims = first_conv_dims(model)
    if dims is None or len(given) == dims + 1:
        return given
    text = ",".join(map(str, given))
    if dims == 2 and len(given) == 2:
        side = given[-1]
        raise ConfigError(
            f"--input-size {text} is ambiguous (C,H or H,W?): give S for a 3xSxS image, e.g. --input-size {side}, "
            f"or all three of C,H,W, e.g. --input-size 3,{side},{side}. (Two numbers are C,L for a model whose first conv is a Conv1d.)"
        )
    kind = {1: "Conv1d (a 1-D model)", 2: "Conv2d (an image model)", 3: "Conv3d (a video / 3-D model)"}[dims]
    example = ",".join(map(str, default_input_size(model)))
    image = " (S alone means a 3xSxS image)" if len(given) == 3 and given[1] == given[2] else ""
    raise ConfigError(
        f"--input-size {text}{image} does not fit this model: its first conv is a {kind}, which takes "
        f"{INPUT_LAYOUTS[dims + 1]} inputs; e.g. --input-size {example}."
    )
