"""Save and load converted models without pickling code: safetensors weights + a JSON recipe.

The recipe names the base model (a ``resolve_model`` spec) and the per-layer plan, so ``load``
rebuilds the same architecture from the base model and then reads the weights into it.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model
from torch import nn

from .convert import PLAN_ATTRIBUTE, get_plan
from .errors import CheckpointError, GhostifyError
from .graph_pass import apply_plan
from .outputs import atomic_directory
from .selection import ConversionPlan

RECIPE_FILE = "ghostify.json"
WEIGHTS_FILE = "model.safetensors"
RECIPE_FORMAT = "ghostify.recipe"
RECIPE_VERSION = 1


def _recorded_path(path: str | Path, directory: Path) -> str:
    """``path`` as stored in a recipe written to ``directory``: relative to it when possible, else absolute."""
    absolute = Path(path).expanduser().absolute()
    try:
        return Path(os.path.relpath(absolute, Path(directory).absolute())).as_posix()
    except ValueError:  # another drive (Windows)
        return str(absolute)


def write_model_files(
    model: nn.Module, directory: Path, *, base_model: str | None, base_checkpoint: str | Path | None = None,
    base_pretrained: bool = False, inputs: dict[str, Any] | None = None,
) -> None:
    """Write ``model.safetensors`` and ``ghostify.json`` into an existing ``directory``.

    ``base_checkpoint``: the weights the base model was loaded from (recorded relative to
    ``directory`` when possible), so that ``ghostify distill`` can rebuild the original model as
    its teacher; ``base_pretrained``: the base model had its source's pretrained weights.
    ``inputs``: the input settings given explicitly (``input_size``, ``mean``, ``std``; None where
    the model's own apply), so that later runs on the model read images the same way.
    """
    from . import __version__

    plan = get_plan(model)
    if plan is None:
        raise GhostifyError("this model carries no ghostify plan; save a model made by ghostify.convert or ghostify.load.")
    recipe: dict[str, Any] = {
        "format": RECIPE_FORMAT,
        "format_version": RECIPE_VERSION,
        "ghostify_version": __version__,
        "base_model": base_model,
        "base_checkpoint": _recorded_path(base_checkpoint, directory) if base_checkpoint is not None else None,
        "base_pretrained": bool(base_pretrained),
        "inputs": {key: list(value) if value is not None else None for key, value in (inputs or {}).items()},
        "plan": plan.to_dict(),
    }
    save_model(model, str(directory / WEIGHTS_FILE))
    (directory / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")


def save(
    model: nn.Module, directory: str | Path, *, base_model: str | None = None, force: bool = False,
    base_checkpoint: str | Path | None = None, base_pretrained: bool = False, inputs: dict[str, Any] | None = None,
) -> Path:
    """Save a converted model to ``directory`` atomically.

    ``base_model`` is the spec ``load`` rebuilds the architecture from (``"timm:resnet50"``,
    ``"path/to/file.py:make_model"``); without it, ``load`` needs ``base_model=`` at load time.
    ``base_checkpoint`` / ``base_pretrained``: where the base model's weights came from (a
    checkpoint file / the source's pretrained weights), recorded so that the original model can be
    rebuilt later, e.g. as the teacher of ``ghostify distill``; ``inputs``: the input size, mean and
    std the model works with, where they differ from what the base model declares.
    """
    with atomic_directory(directory, force=force) as staging:
        write_model_files(model, staging, base_model=base_model, base_checkpoint=base_checkpoint, base_pretrained=base_pretrained,
                          inputs=inputs)
    return Path(directory)


def read_recipe(directory: str | Path) -> dict[str, Any]:
    """The recipe of a saved model directory, checked for format and version."""
    path = Path(directory) / RECIPE_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} holds no {RECIPE_FILE}; is it a directory written by `ghostify convert -o`?")
    try:
        recipe = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: invalid JSON or not UTF-8
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if not isinstance(recipe, dict):
        raise CheckpointError(f"{path} is not a ghostify recipe (it holds a JSON {type(recipe).__name__}, not an object).")
    if recipe.get("format") != RECIPE_FORMAT:
        raise CheckpointError(f"{path} is not a ghostify recipe (format={recipe.get('format')!r}).")
    version = recipe.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path} has a malformed format_version {version!r}; re-create it with `ghostify convert -o`.")
    if version > RECIPE_VERSION:
        raise CheckpointError(f"{path} was written by a newer ghostify ({recipe.get('ghostify_version')}); upgrade ghostify.")
    return recipe


def base_weights(directory: str | Path, recipe: dict[str, Any] | None = None) -> tuple[Path | None, bool]:
    """(checkpoint, pretrained) of the base model a saved directory was converted from.

    The checkpoint path is resolved against ``directory`` (recipes store it relative to it); it is
    None when the recipe records none (random or pretrained weights, or a recipe older than this
    field). ``CheckpointError`` if the recipe holds a malformed value.
    """
    recipe = read_recipe(directory) if recipe is None else recipe
    recorded, pretrained = recipe.get("base_checkpoint"), recipe.get("base_pretrained", False)
    if recorded is not None and (not isinstance(recorded, str) or not recorded):
        raise CheckpointError(f"{Path(directory) / RECIPE_FILE} holds a malformed base_checkpoint {recorded!r}.")
    if not isinstance(pretrained, bool):
        raise CheckpointError(f"{Path(directory) / RECIPE_FILE} holds a malformed base_pretrained {pretrained!r}.")
    if recorded is None:
        return None, pretrained
    return Path(os.path.normpath(Path(directory).expanduser().absolute() / Path(recorded).expanduser())), pretrained


def recorded_inputs(directory: str | Path, recipe: dict[str, Any] | None = None) -> dict[str, tuple | None]:
    """The input settings a saved directory records (``input_size``, ``mean``, ``std``; None = the model's own).

    Recipes older than this field, and malformed entries, give None for every setting.
    """
    recipe = read_recipe(directory) if recipe is None else recipe
    recorded = recipe.get("inputs")
    recorded = recorded if isinstance(recorded, dict) else {}
    found: dict[str, tuple | None] = {}
    for key, kind in (("input_size", int), ("mean", (int, float)), ("std", (int, float))):
        value = recorded.get(key)
        ok = isinstance(value, list) and value and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
        found[key] = tuple(value) if ok else None
    if found["input_size"] is not None and len(found["input_size"]) != 3:
        found["input_size"] = None
    return found


def load(directory: str | Path, base_model: nn.Module | str | None = None, *, trust_checkpoint: bool = False) -> nn.Module:
    """Rebuild a model saved by ``save`` / ``ghostify convert -o``.

    ``base_model``: the unconverted model (a module, copied and left untouched, or a spec);
    by default the spec recorded in the recipe.
    """
    from .models import resolve_model

    recipe = read_recipe(directory)
    try:
        plan = ConversionPlan.from_dict(recipe["plan"])
    except GhostifyError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # a hand-edited or truncated recipe
        raise CheckpointError(
            f"{Path(directory) / RECIPE_FILE} holds a malformed plan ({type(err).__name__}: {err}); "
            "re-create the directory with `ghostify convert -o`."
        ) from None
    if base_model is None:
        if not recipe.get("base_model"):
            raise GhostifyError(
                f"{directory} does not record its base model; call ghostify.load(directory, base_model=YourModel())."
            )
        base_model = recipe["base_model"]
    if isinstance(base_model, str):
        model = resolve_model(base_model, trust_checkpoint=trust_checkpoint).model
    else:
        model = copy.deepcopy(base_model)
    mismatch = plan.base_model_mismatch(model)
    if mismatch:
        raise CheckpointError(
            f"the base model does not match {directory}: {mismatch}. Pass the base model the directory was converted from."
        )
    apply_plan(model, plan, transfer=False)
    weights = Path(directory) / WEIGHTS_FILE
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"cannot load {weights}: {err}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit the rebuilt model: missing {sorted(missing)[:8]}, unexpected "
            f"{sorted(unexpected)[:8]}; was it saved from a different base model?"
        )
    setattr(model, PLAN_ATTRIBUTE, plan)
    return model

