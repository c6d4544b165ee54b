"""The ``c-array`` step type: embed a .tflite model in C++ source for firmware.

Microcontrollers have no file system, so the model ships as a byte array
compiled into flash -- what ``xxd -i`` produces, but with what firmware needs
and ``xxd`` lacks: ``alignas(16)`` (TFLite Micro reads the flatbuffer in place
and requires aligned buffers), ``const`` so the linker keeps it in flash, a
header with ``extern`` declarations and an include guard, and an identifier
that is guaranteed to be valid C/C++.

The ``.cc`` includes its header *before* defining the array: a namespace-scope
``const`` object has internal linkage in C++, and the earlier ``extern``
declaration is what gives the definition external linkage.

With ``tflm = true`` (the default) the step also writes ``<name>_tflm.h``,
what a firmware engineer otherwise writes by hand next, from facts measured
on TFLite Micro rather than guessed (see ``tflm_bundle``): the arena size
and a function registering exactly the model's operators.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any, Sequence

from pydantic import Field, field_validator

from tinybuild.api import Artifact, Kind, Params, StepError, StepType, hookimpl

BYTES_PER_LINE = 12

#: C11 and C++17 keywords (plus alternative operator tokens): none may name the array.
C_KEYWORDS = frozenset("""
    alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t
    char16_t char32_t class compl concept const consteval constexpr constinit const_cast
    continue co_await co_return co_yield decltype default delete do double dynamic_cast
    else enum explicit export extern false float for friend goto if inline int long
    mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected
    public register reinterpret_cast requires restrict return short signed sizeof static
    static_assert static_cast struct switch template this thread_local throw true try
    typedef typeid typename union unsigned using virtual void volatile wchar_t while xor
    xor_eq _Alignas _Alignof _Atomic _Bool _Complex _Generic _Imaginary _Noreturn
    _Static_assert _Thread_local
""".split())

#: used with ``fullmatch``: ``$`` would accept a trailing newline
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: valid identifiers that still cannot name a global array: C++ forbids a
#: global variable called ``main`` ("cannot declare '::main' to be a global
#: variable"), and in C it would clash with the firmware's entry point;
#: ``std`` and ``tflite`` are namespaces (of the C++ library and of TFLM, which
#: the generated files include: "redeclared as different kind of entity");
#: the rest are types and macros of the standard headers they include
#: (<stddef.h>, <stdint.h>, <cstdint>), which a global of that name would clash
#: with or be rewritten by
RESERVED_NAMES = frozenset({
    "main", "std", "tflite",
    "size_t", "ptrdiff_t", "max_align_t", "nullptr_t", "wchar_t", "NULL", "offsetof",
    "int8_t", "int16_t", "int32_t", "int64_t", "uint8_t", "uint16_t", "uint32_t", "uint64_t",
    "int_least8_t", "int_least16_t", "int_least32_t", "int_least64_t",
    "uint_least8_t", "uint_least16_t", "uint_least32_t", "uint_least64_t",
    "int_fast8_t", "int_fast16_t", "int_fast32_t", "int_fast64_t",
    "uint_fast8_t", "uint_fast16_t", "uint_fast32_t", "uint_fast64_t",
    "intptr_t", "uintptr_t", "intmax_t", "uintmax_t",
    "INT8_MAX", "INT16_MAX", "INT32_MAX", "INT64_MAX", "UINT8_MAX", "UINT16_MAX", "UINT32_MAX", "UINT64_MAX",
    "INT8_MIN", "INT16_MIN", "INT32_MIN", "INT64_MIN", "SIZE_MAX", "PTRDIFF_MAX", "PTRDIFF_MIN",
    "INTPTR_MAX", "INTPTR_MIN", "UINTPTR_MAX", "INTMAX_MAX", "INTMAX_MIN", "UINTMAX_MAX",
})


def identifier_problem(name: str) -> str | None:
    """Why ``name`` cannot name a C/C++ array, or None if it can."""
    if not _IDENTIFIER.fullmatch(name):
        return "a C identifier has only letters, digits and '_' and does not start with a digit"
    if name in C_KEYWORDS:
        return f"'{name}' is a C/C++ keyword"
    if name == "main":
        return f"'{name}' is the program's entry point; a global array cannot take that name"
    if name in RESERVED_NAMES:
        return (f"'{name}' is a namespace, type or macro of the headers the generated C/C++ includes; "
                f"a global array of that name would not compile (e.g. name = \"{name}_model\")")
    if name.startswith("__") or re.match(r"^_[A-Z]", name):
        return "identifiers starting with '__' or '_' + capital letter are reserved for the compiler"
    if len(name) > 200:
        return "keep identifiers under 200 characters"
    return None


def identifier_from(step_name: str) -> str:
    """A valid identifier derived from a step name: ``int8-model`` → ``int8_model``,
    ``8bit`` → ``model_8bit``, ``float`` → ``float_model``, ``main`` → ``main_model``,
    ``Ünïcode`` → ``Unicode``."""
    ascii_name = unicodedata.normalize("NFKD", step_name).encode("ascii", "ignore").decode("ascii")
    ident = re.sub(r"[^A-Za-z0-9_]+", "_", ascii_name).strip("_")
    ident = re.sub(r"_+", "_", ident)
    if not ident:
        return "model"
    if ident[0].isdigit():
        ident = f"model_{ident}"
    if ident in C_KEYWORDS or ident in RESERVED_NAMES:
        ident = f"{ident}_model"
    return ident[:200]


class CArrayParams(Params):
    name: str | None = Field(
        None,
        description="C identifier of the array (files <name>.h/.cc, length <name>_len); "
                    "default: derived from the step name",
    )
    tflm: bool = Field(
        True,
        description="also write <name>_tflm.h: kTensorArenaSize measured on TFLite Micro (plus "
                    "[target] arena_margin) and a function registering the model's operators; "
                    "false writes the bare array (for another runtime)",
    )

    @field_validator("name")
    @classmethod
    def _valid_identifier(cls, value: str | None) -> str | None:
        if value is not None:
            problem = identifier_problem(value)
            if problem:
                raise ValueError(f"'{value}' is not a usable C identifier: {problem}")
        return value


def comment_safe(text: str) -> str:
    """Step names end up in // comments: keep them printable ASCII, one line."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _hex_lines(data: bytes) -> list[str]:
    return [
        "    " + " ".join(f"0x{b:02x}," for b in data[i : i + BYTES_PER_LINE])
        for i in range(0, len(data), BYTES_PER_LINE)
    ]


def render_header(ident: str, source_step: str, size: int, sha256: str) -> str:
    guard = f"TINYBUILD_{ident.upper()}_H_"
    return "\n".join([
        f"// Generated by tinybuild from step '{comment_safe(source_step)}'. Do not edit.",
        f"// {size} bytes, sha256 {sha256}",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        f"extern const unsigned char {ident}[];",
        f"extern const unsigned int {ident}_len;",
        "",
        f"#endif  // {guard}",
        "",
    ])


def render_source(ident: str, source_step: str, data: bytes, sha256: str) -> str:
    body = _hex_lines(data) or ["    0x00,  // empty model"]
    return "\n".join([
        f"// Generated by tinybuild from step '{comment_safe(source_step)}'. Do not edit.",
        f"// {len(data)} bytes, sha256 {sha256}",
        f'#include "{ident}.h"',
        "",
        "// 16-byte alignment: TFLite Micro reads the flatbuffer in place.",
        f"alignas(16) const unsigned char {ident}[] = {{",
        *body,
        "};",
        f"const unsigned int {ident}_len = {len(data)};",
        "",
    ])


def run(ctx: Any, inputs: Sequence[Artifact], params: CArrayParams) -> dict[str, Any]:
    source = inputs[0]
    ident = params.name or identifier_from(ctx.step)
    data = source.file("model.tflite").read_bytes()
    if not data:
        raise StepError(f"step '{ctx.step}': model.tflite of '{source.step}' is empty")
    sha256 = hashlib.sha256(data).hexdigest()
    (ctx.out_dir / f"{ident}.h").write_text(render_header(ident, source.step, len(data), sha256), encoding="utf-8")
    (ctx.out_dir / f"{ident}.cc").write_text(render_source(ident, source.step, data, sha256), encoding="utf-8")
    ctx.log(f"{ident}.h / {ident}.cc: {len(data)} bytes from '{source.step}'")
    metrics = {"identifier": ident, "bytes": len(data), "files": [f"{ident}.cc", f"{ident}.h"], "sha256": sha256}
    if params.tflm:
        from tinybuild_plugins.tflite import tflm_bundle

        header, facts = tflm_bundle.bundle(ctx, source, ident, data)
        (ctx.out_dir / f"{ident}_tflm.h").write_text(header, encoding="utf-8")
        metrics["files"].append(f"{ident}_tflm.h")
        metrics["tflm"] = facts
        ctx.log(f"{ident}_tflm.h: kTensorArenaSize {facts['tensor_arena_size']:,} B (needs "
                f"{facts['arena_bytes']:,} B on TFLM), MicroMutableOpResolver<{len(facts['operators'])}>")
    return metrics


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [
        StepType(
            name="c-array",
            version="1.1",
            produces=Kind.C_SOURCE,
            consumes=(Kind.TFLITE,),
            params=CArrayParams,
            run=run,
            toolchain=("tflite-micro",),
            uses_target=("arena_margin",),  # it sizes kTensorArenaSize; budgets and labels do not rerun it
            fingerprint_modules=("tinybuild_plugins.tflite.tflm_bundle", "tinybuild_plugins.tflite.tflm",
                                 "tinybuild_plugins.tflite.tflm_child", "tinybuild_plugins.tflite.op_resolver",
                                 "tinybuild_plugins.tflite.arena"),
            description="Embed a .tflite model as an aligned C++ byte array (<name>.h + <name>.cc) and, "
                        "for TFLite Micro, <name>_tflm.h (measured kTensorArenaSize, op resolver)",
        )
    ]
