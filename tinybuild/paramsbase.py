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
    what its cache key was computed from. A quoted number (``epochs = "3"``)
    is rejected for a number or boolean field rather than converted, so the
    loader agrees with the JSON Schema editors check recipes against.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_quoted_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and info.field_name in cls.model_fields:
            kinds = scalar_kinds(cls.model_fields[info.field_name].annotation)
            if kinds is not None:
                from pydantic_core import PydanticCustomError

                kind = "bool" if kinds == {bool} else "int" if kinds == {int} else "float"
                word = {"bool": "boolean (true/false)", "int": "integer", "float": "number"}[kind]
                quoted = value.strip().lower() in ("true", "false") or _is_number(value)
                raise PydanticCustomError(f"{kind}_type", "Input should be a valid {word}, not a string{fix}",
                                          {"word": word, "fix": "; remove the quotes" if quoted else ""})
        return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def scalar_kinds(annotation: Any) -> set[type] | None:
    """The number/boolean types a field admits ({int}, {int, float}, {bool}),
    or None when it admits anything else (a string, a path, a list...): for
    such fields a string is a mistake, not something to coerce."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return scalar_kinds(typing.get_args(annotation)[0])
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
