"""The pydantic half of the plugin API: :class:`Params` and :data:`InputFile`.

Split from :mod:`tinybuild.api` (which re-exports both, so plugins keep
writing ``from tinybuild.api import Params, InputFile``) because pydantic
costs ~0.1 s to import and the core must be able to plan and replay a fully
cached build from the configuration cache (:mod:`tinybuild.configcache`)
without it: :mod:`tinybuild.api` imports this module only when a plugin
first asks for one of these names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator

from .api import INPUT_FILE, INPUT_FILE_ERROR


class Params(BaseModel):
    """Base class for a step type's parameters.

    Unknown keys are rejected (the recipe loader turns them into "did you
    mean" errors), and params are frozen so a running step cannot change
    what its cache key was computed from.

    Numbers and booleans are taken as the JSON Schema editors check recipes
    against takes them, not as pydantic's lax mode would: a quoted number
    (``epochs = "3"``), a boolean for a number (``patience = true``) and a
    number for a boolean (``tflm = 1``) are errors rather than conversions.
    A float with an integral value for an integer (``epochs = 2.0``) is an
    integer in JSON Schema, so it is accepted and normalized to ``2``, and an
    integer for a float field to a float, so ``1`` and ``1.0`` always give
    the same params (and cache key). Lists and tuples of numbers
    (``test_folds = [1, 2]``) are checked item by item.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_as_written(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        return value if field is None else as_written(value, field.annotation)


_WORDS = {"bool": "boolean (true/false)", "int": "integer", "float": "number"}


def as_written(value: Any, annotation: Any, at: str = "") -> Any:
    """``value`` with integral floats for integer fields made ints and ints
    for float fields made floats (walking lists and tuples), or a
    ``PydanticCustomError`` when a scalar would only pass by coercion.
    ``at`` is the item's path below the field (``[1]``), carried in the
    error's context so the loader can name the exact key."""
    kinds = scalar_kinds(annotation)
    if kinds is not None:
        return _scalar(value, kinds, at)
    if isinstance(value, list):
        items = item_annotations(annotation, len(value))
        if items is not None:
            return [as_written(v, a, f"{at}[{i}]") for i, (v, a) in enumerate(zip(value, items))] + value[len(items):]
    return value


def _scalar(value: Any, kinds: set[type], at: str) -> Any:
    from pydantic_core import PydanticCustomError

    kind = "bool" if kinds == {bool} else "int" if kinds == {int} else "float" if float in kinds else "int"
    if isinstance(value, str):
        quoted = value.strip().lower() in ("true", "false") or _is_number(value)
        fix = "remove the quotes" if quoted else f"write a {_WORDS[kind]}"
        raise PydanticCustomError(f"{kind}_type", "Input should be a valid {word}, not a string",
                                  {"word": _WORDS[kind], "fix": fix, "at": at, "got": value})
    if isinstance(value, bool):
        if bool not in kinds:
            raise PydanticCustomError(f"{kind}_type", "Input should be a valid {word}, not a boolean",
                                      {"word": _WORDS[kind], "at": at, "got": value,
                                       "fix": f"write a number, e.g. {int(value)}: a boolean is not a number here"})
        return value
    if isinstance(value, (int, float)):
        if kinds == {bool}:
            raise PydanticCustomError("bool_type", "Input should be a valid {word}, not a number",
                                      {"word": _WORDS["bool"], "at": at, "got": value,
                                       "fix": "write true or false: a number is not a boolean here"})
        if isinstance(value, float) and kinds <= {int, bool} and value.is_integer():
            return int(value)  # JSON Schema's integer: 2.0 is 2
        if isinstance(value, int) and float in kinds and int not in kinds:
            return float(value)
    return value


def item_annotations(annotation: Any, n: int) -> list[Any] | None:
    """The annotations of a list value's n items under ``list[X]``,
    ``tuple[X, ...]``, ``tuple[X, Y]`` (possibly ``| None`` or Annotated);
    None when the annotation is no such sequence."""
    import collections.abc
    import types
    import typing

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return item_annotations(args[0], n)
    if origin is typing.Union or origin is types.UnionType:
        found = [a for a in (item_annotations(arg, n) for arg in args if arg is not type(None)) if a is not None]
        return found[0] if len(found) == 1 else None
    if origin in (list, set, frozenset, collections.abc.Sequence) and len(args) == 1:
        return [args[0]] * n
    if origin is tuple and args:
        return [args[0]] * n if len(args) == 2 and args[1] is Ellipsis else list(args)
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def scalar_kinds(annotation: Any) -> set[type] | None:
    """The number/boolean types a field admits ({int}, {int, float}, {bool}),
    or None when it admits anything else (a string, a path, a list...): for
    such fields a string is a mistake, not something to coerce. A ``Literal``
    of numbers or booleans admits their types."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return scalar_kinds(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        found = {type(v) for v in typing.get_args(annotation)}
        return found if found and found <= {bool, int, float} else None
    if origin is typing.Union or origin is types.UnionType:
        found: set[type] = set()
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            kinds = scalar_kinds(arg)
            if kinds is None:
                return None
            found |= kinds
        return found or None
    if annotation in (bool, int, float):
        return {annotation}
    return None


def _resolve_against_recipe(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = Path(value).expanduser()
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value





def _only_regular_files(value: Path) -> Path:
    """Refuse, when the recipe is loaded (exit 2, naming the key), a path that
    names a FIFO, a device, a folder or a socket, or that cannot name a file
    at all (NUL byte, name too long): reading those hangs or fills memory.
    A missing file passes here and is reported when the plan hashes it."""
    from .safeio import check_regular

    try:
        check_regular(value)
    except FileNotFoundError:
        return value
    except OSError as exc:
        from pydantic_core import PydanticCustomError

        # its own error type, so that the recipe loader can say how to fix it
        raise PydanticCustomError(INPUT_FILE_ERROR, "{problem}: {path}",
                                  {"problem": exc.strerror or str(exc), "path": str(exc.filename or value)}) from None
    return value



#: A params field holding a path to a file the step reads. Relative paths are
#: resolved against the recipe's folder; the file's *content digest* (not its
#: path) enters the step's cache key, so moving data with ``${VAR}`` does not
#: invalidate the cache while editing the data does.
#: Only regular files are accepted (see :mod:`tinybuild.safeio`); plugins read
#: them with :func:`open_input_file`, which checks again at open time.
InputFile = Annotated[Path, AfterValidator(_resolve_against_recipe), AfterValidator(_only_regular_files), INPUT_FILE]
