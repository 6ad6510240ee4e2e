"""Save and load converted models without pickling code: safetensors weights + a JSON recipe.

The recipe names the base model (a ``resolve_model`` spec), where its weights came from, and the
per-layer plan, so ``load`` rebuilds the same architecture from the base model and then reads the
weights into it, and ``ghostify compare`` / ``distill`` can rebuild the original model.
"""

from __future__ import annotations

import filecmp
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model
from torch import nn

from .deploy import DeployRecord, apply_deploy_record, get_deploy_record
from .errors import CheckpointError, GhostifyError, ModelSpecError
from .frozen import FrozenModel
from .graph_pass import copy_model
from .graph_pass import apply_plan
from .models import DEFAULT_SEED, ResolvedModel, canonical_spec, model_file, resolve_model
from .outputs import PYTHON_WORDING, atomic_directory
from .records import RecordKind
from .reparameterize import reparameterize
from .selection import PLAN_ATTRIBUTE, get_plan
from .selection import ConversionPlan
from .version import __version__

RECIPE_FILE = "ghostify.json"
WEIGHTS_FILE = "model.safetensors"
RECIPE_FORMAT = "ghostify.recipe"
RECIPE_VERSION = 1
RECIPE_RECORD = RecordKind("ghostify recipe", "format_version", RECIPE_VERSION, "format", RECIPE_FORMAT)
SAVED_MODEL_FILES = frozenset({RECIPE_FILE, WEIGHTS_FILE})


def _recorded_path(path: str | Path, directory: Path) -> str:
    """``path`` as stored in a recipe written to ``directory``: relative to it when possible, else absolute."""
    absolute = Path(path).expanduser().absolute()
    try:
        return Path(os.path.relpath(absolute, Path(directory).absolute())).as_posix()
    except ValueError:  # another drive (Windows)
        return str(absolute)


def _recorded_location(recorded: str, directory: str | Path) -> Path:
    """The absolute path a recipe in ``directory`` means by ``recorded`` (the inverse of ``_recorded_path``)."""
    return Path(os.path.normpath(Path(directory).expanduser().absolute() / Path(recorded).expanduser()))


def write_model_files(
    model: nn.Module, directory: Path, *, base_model: str | None, base_checkpoint: str | Path | None = None,
    base_pretrained: bool = False, base_seed: int | None = None, inputs: dict[str, Any] | None = None,
) -> None:
    """Write ``model.safetensors`` and ``ghostify.json`` into an existing ``directory``.

    ``base_model``: the spec of the model converted; a model file's path is also recorded relative
    to ``directory``, so that the directory and the file can move together.
    ``base_checkpoint``: the weights the base model was loaded from (recorded relative to
    ``directory`` when possible), so that ``ghostify distill`` can rebuild the original model as
    its teacher; ``base_pretrained``: the base model had its source's pretrained weights;
    ``base_seed``: the seed its random weights were drawn with (``ResolvedModel.seed``), so that
    ``ghostify compare`` can rebuild them.
    ``inputs``: the input settings given explicitly (``input_size``, ``mean``, ``std``; None where
    the model's own apply), so that later runs on the model read images the same way.
    """
    plan = get_plan(model)
    if plan is None:
        raise GhostifyError("this model carries no ghostify plan; save a model made by ghostify.convert or ghostify.load.")
    if base_seed is not None and (isinstance(base_seed, bool) or not isinstance(base_seed, int)):
        raise GhostifyError(f"base_seed must be a whole number (the seed the base model was built with), got {base_seed!r}.")
    base_file = model_file(base_model) if base_model is not None else None
    deploy_record = get_deploy_record(model)
    recipe: dict[str, Any] = {
        "format": RECIPE_FORMAT,
        "format_version": RECIPE_VERSION,
        "ghostify_version": __version__,
        "base_model": canonical_spec(base_model) if base_file is not None else base_model,
        "base_model_file": _recorded_path(base_file, directory) if base_file is not None else None,
        "base_checkpoint": _recorded_path(base_checkpoint, directory) if base_checkpoint is not None else None,
        "base_pretrained": bool(base_pretrained),
        "base_seed": base_seed,
        "inputs": {key: list(value) if value is not None else None for key, value in (inputs or {}).items()},
        "plan": plan.to_dict(),
        "deploy": deploy_record.to_dict() if deploy_record is not None else None,
    }
    save_model(model, str(directory / WEIGHTS_FILE))
    (directory / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")


def save(
    model: nn.Module, directory: str | Path, *, base_model: str | None = None, force: bool = False,
    base_checkpoint: str | Path | None = None, base_pretrained: bool = False, base_seed: int | None = None,
    inputs: dict[str, Any] | None = None,
) -> Path:
    """Save a converted model to ``directory`` atomically; a non-empty ``directory`` needs ``force=True``.

    ``base_model`` is the spec ``load`` rebuilds the architecture from (``"timm:resnet50"``,
    ``"path/to/file.py:make_model"``); without it, ``load`` needs ``base_model=`` at load time.
    ``base_checkpoint`` / ``base_pretrained`` / ``base_seed``: where the base model's weights came
    from (a checkpoint file / the source's pretrained weights / random weights drawn with this
    seed, ``ResolvedModel.seed``), recorded so that the original model can be rebuilt later, e.g.
    by ``ghostify compare`` or as the teacher of ``ghostify distill``; ``inputs``: the input size,
    mean and std the model works with, where they differ from what the base model declares.
    A frozen model (``ghostify.freeze``) is saved as the model it wraps; freeze it again after ``load``.
    """
    if isinstance(model, FrozenModel):
        model = model.model
    with atomic_directory(directory, force=force, wording=PYTHON_WORDING) as staging:
        write_model_files(model, staging, base_model=base_model, base_checkpoint=base_checkpoint, base_pretrained=base_pretrained,
                          base_seed=base_seed, inputs=inputs)
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
    RECIPE_RECORD.version_of(recipe, source=str(path), error=CheckpointError)
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
    return _recorded_location(recorded, directory), pretrained


@dataclass(frozen=True)
class BaseModelOrigin:
    """The model a saved directory was converted from, as its recipe records it."""

    spec: str | None  # None: not recorded; a model file's path points where the file is now, if found
    checkpoint: Path | None  # absolute
    pretrained: bool
    seed: int | None  # of random weights; None: not recorded

    @property
    def weights(self) -> str:
        """Where the weights came from, in words."""
        if self.checkpoint is not None:
            return f"the weights in {self.checkpoint}"
        if self.pretrained:
            return "pretrained weights"
        if self.seed is not None:
            return f"random weights (seed {self.seed})"
        return "weights it does not record (no checkpoint, pretrained weights or seed)"

    @property
    def model_file_missing(self) -> bool:
        """Whether the spec names a model file that is no longer there (moved without the directory)."""
        return self.spec is not None and _missing_model_file(self.spec)

    @property
    def rebuildable(self) -> bool:
        """Whether the recipe says enough to build this model and its weights again."""
        known_weights = self.checkpoint is not None or self.pretrained or self.seed is not None
        return self.spec is not None and not self.model_file_missing and known_weights

    def command_arguments(self) -> str:
        """The ``MODEL [-c CKPT | --pretrained]`` arguments that build this model on the command line."""
        weights = f" -c {self.checkpoint}" if self.checkpoint is not None else " --pretrained" if self.pretrained else ""
        return f"{self.spec}{weights}"


def recorded_origin(directory: str | Path, recipe: dict[str, Any] | None = None) -> BaseModelOrigin:
    """The base model ``directory`` records: spec, checkpoint, pretrained, seed.

    A model file is looked for first where the recipe places it relative to ``directory`` (so the
    two can move together), then at its recorded absolute path. ``CheckpointError`` for malformed
    fields; fields a recipe lacks (older versions) come back as None.
    """
    recipe = read_recipe(directory) if recipe is None else recipe
    checkpoint, pretrained = base_weights(directory, recipe)
    spec, relative_file, seed = recipe.get("base_model"), recipe.get("base_model_file"), recipe.get("base_seed")
    for field_name, value, kind in (("base_model", spec, str), ("base_model_file", relative_file, str), ("base_seed", seed, int)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind) or value == ""):
            raise CheckpointError(f"{Path(directory) / RECIPE_FILE} holds a malformed {field_name} {value!r}.")
    if spec and relative_file:
        moved_with_directory = _recorded_location(relative_file, directory)
        if moved_with_directory.is_file():
            spec = f"{moved_with_directory}:{spec.rpartition(':')[2]}"
    return BaseModelOrigin(spec=spec or None, checkpoint=checkpoint, pretrained=pretrained, seed=seed)


def origin_mismatch(directory: str | Path, original: ResolvedModel, origin: BaseModelOrigin | None = None) -> str | None:
    """Why ``original`` may not be the model ``directory`` was converted from, or None if it is.

    Compares the spec and where the weights came from: the checkpoint (the same file, or one with
    the same bytes), pretrained weights, or the seed of random weights.
    """
    origin = recorded_origin(directory) if origin is None else origin
    if origin.spec is None:
        return f"{directory} does not record the model it was converted from"
    if not _same_spec(origin.spec, original.spec):
        gone = ", which is no longer there to check against" if origin.model_file_missing else ""
        return f"{directory} was converted from {origin.spec}{gone}, not from {original.spec}"
    if origin.checkpoint is not None:
        same_weights = original.checkpoint is not None and _same_file(origin.checkpoint, Path(original.checkpoint))
    elif origin.pretrained:
        same_weights = original.pretrained
    else:
        same_weights = origin.seed is not None and original.seed == origin.seed
    if same_weights:
        return None
    given = BaseModelOrigin(original.spec, Path(original.checkpoint) if original.checkpoint else None, original.pretrained, original.seed)
    return f"{directory} was converted from {origin.spec} with {origin.weights}, not with {given.weights}"


def _same_file(first: Path, second: Path) -> bool:
    """The same file, or two files with the same bytes (a copied checkpoint or model file)."""
    try:
        return first.resolve() == second.resolve() or filecmp.cmp(first, second, shallow=False)
    except OSError:  # one of them is missing
        return False


def _same_spec(first: str, second: str) -> bool:
    """Two specs naming the same model: equal once canonical, or the same function of identical files."""
    try:
        if canonical_spec(first) == canonical_spec(second):
            return True
        first_file, second_file = model_file(first), model_file(second)
    except ModelSpecError:  # a malformed recorded spec
        return first == second
    return (first_file is not None and second_file is not None
            and first.rpartition(":")[2] == second.rpartition(":")[2] and _same_file(first_file, second_file))


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
    if found["input_size"] is not None and len(found["input_size"]) not in (2, 3, 4):  # C,L / C,H,W / C,T,H,W
        found["input_size"] = None
    return found


def load(directory: str | Path, base_model: nn.Module | str | None = None, *, trust_checkpoint: bool = False) -> nn.Module:
    """Rebuild a model saved by ``save`` / ``ghostify convert -o``.

    ``base_model``: the unconverted model (a module, copied and left untouched, or a spec);
    by default the spec recorded in the recipe (a model file is looked for beside the directory
    first, as saved, then at its absolute path). Specs are built under the recorded seed.
    """
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
    if base_model is None or isinstance(base_model, str):
        origin = recorded_origin(directory, recipe)
        if base_model is None:
            if origin.spec is None:
                raise GhostifyError(
                    f"{directory} does not record its base model; call ghostify.load(directory, base_model=YourModel())."
                )
            if origin.model_file_missing:
                raise _moved_model_file_error(directory, origin.spec, recipe)
            base_model = origin.spec
        seed = origin.seed if origin.seed is not None else DEFAULT_SEED
        model = resolve_model(base_model, trust_checkpoint=trust_checkpoint, seed=seed).model
    else:
        model = copy_model(base_model)
    if plan.reparameterized:
        reparameterize(model)
    mismatch = plan.base_model_mismatch(model)
    if mismatch:
        raise CheckpointError(
            f"the base model does not match {directory}: {mismatch}. Pass the base model the directory was converted from."
        )
    apply_plan(model, plan, transfer=False)
    if recipe.get("deploy"):
        _apply_recorded_deploy(model, recipe["deploy"], directory)
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


def _apply_recorded_deploy(model: nn.Module, record: Any, directory: str | Path) -> None:
    """Give the rebuilt model the deploy-form structure the recipe records (see ``ghostify.deploy``)."""
    try:
        apply_deploy_record(model, DeployRecord.from_dict(record))
    except GhostifyError as err:
        raise CheckpointError(f"{Path(directory) / RECIPE_FILE}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(
            f"{Path(directory) / RECIPE_FILE} holds a malformed deploy record ({type(err).__name__}: {err}); "
            "re-create the directory with `ghostify convert --deploy -o`."
        ) from None


def _missing_model_file(spec: str) -> bool:
    """Whether ``spec`` names a model file that does not exist (False for other and malformed specs)."""
    try:
        path = model_file(spec)
    except ModelSpecError:
        return False
    return path is not None and not path.is_file()


def _moved_model_file_error(directory: str | Path, spec: str, recipe: dict[str, Any]) -> ModelSpecError:
    """The model file a recipe names is gone: say where it was looked for and the two ways out."""
    path, _, function = spec.rpartition(":")
    relative = recipe.get("base_model_file")
    moved_with_directory = _recorded_location(relative, directory) if isinstance(relative, str) and relative else Path(path)
    beside = (f" (nor at {moved_with_directory}, where it would be had it moved with the directory)"
              if moved_with_directory != Path(path) else "")
    new_spec = f"NEW/PATH/{Path(path).name}:{function}"
    return ModelSpecError(
        f"{directory} was converted from {function}() in {path}, which is no longer there{beside}. Move the file back, "
        f"or name the base model yourself: in Python, ghostify.load({str(directory)!r}, base_model=...) with the model "
        f"object or its new spec '{new_spec}'; on the command line, `ghostify compare {new_spec} {directory}` builds it "
        f"from ORIGINAL, and `ghostify distill {directory} --teacher {new_spec} -c CKPT` from --teacher."
    )

