"""JSON Schema of recipes, including every installed plugin's params.

Editors (VS Code's Even Better TOML, Taplo, ...) and CI validators
(check-jsonschema) use it to complete and check recipes:
``tinybuild schema > recipe.schema.json``.

Step tables are *discriminated on* ``use``: the table's shape is chosen by
an ``if {"use": const} then {$ref: that step type}`` per step type, never by
an undiscriminated ``oneOf``. So a misspelled key is reported by a validator
as exactly that key ("Additional properties are not allowed ('epocs' was
unexpected)") at the step's path, instead of one "not valid under any of the
given schemas" line per step type. Each step type's table is closed
(``additionalProperties: false``), like the loader, which rejects unknown
keys too; numbers are numbers in both (the loader does not accept ``"32"``).
"""

from __future__ import annotations

import re
from typing import Any

from . import __version__
from .api import Kind, StepType
from .plugins import Registry
from .recipe import STEP_NAME, RecipeMeta, Target

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"
#: identifies the schema (and its version) to tools; not a URL to fetch
SCHEMA_ID = f"urn:tinybuild:recipe-schema:{__version__}"

DESCRIPTIONS = {
    "recipe": "The recipe's name (it names the build folder), its seed and its cache salt.",
    "target": "The device the model is built for. Its budgets (flash_kb, ram_kb, min_accuracy) become "
              "build gates: a variant over budget fails the build with exit code 3.",
    "dataset": "The dataset step, named dataset. Its use key names a dataset step type (e.g. idx or npz); "
               "step types that read data get it implicitly.",
    "model": "The model step, named model. Its use key names a step type (e.g. keras); it is the default "
             "input of training steps.",
    "steps": "The other steps, one table per step: [steps.NAME]. use names the step type, input or inputs "
             "name the steps whose outputs it reads; the other keys are the step type's parameters "
             "(see tinybuild plugins).",
}

_REST = [(re.compile(r":[a-z]+:`~?([^`]+)`"), r"\1"), (re.compile(r"``([^`]+)``"), r"\1")]


def plain(text: str) -> str:
    """Descriptions as plain text: editors show them verbatim, so reST
    markup (``code``, :class:`X`) would show as noise."""
    for pattern, repl in _REST:
        text = pattern.sub(repl, text)
    return text


def _plain_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: plain(v) if k == "description" and isinstance(v, str) else _plain_descriptions(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_plain_descriptions(v) for v in node]
    return node


def _without_null(node: Any) -> Any:
    """TOML has no null, so ``anyOf [X, {type: null}]`` (pydantic's ``X | None``)
    is just X in a recipe, and a validator then says "'32' is not of type
    'number'" instead of "not valid under any of the given schemas"."""
    if isinstance(node, list):
        return [_without_null(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _without_null(v) for k, v in node.items()}
    options = node.get("anyOf")
    if isinstance(options, list):
        kept = [o for o in options if o != {"type": "null"}]
        if len(kept) == 1 and len(kept) < len(options):
            del node["anyOf"]
            node = {**kept[0], **node}
        elif len(kept) < len(options):
            node["anyOf"] = kept
    return node


def _prefixed(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """Move a model schema's ``$defs`` into the shared ``defs`` under unique names."""
    local = schema.pop("$defs", {})
    renames = {name: f"{prefix}.{name}" for name in local}

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
                    out[k] = "#/$defs/" + renames.get(v[len("#/$defs/"):], v[len("#/$defs/"):])
                else:
                    out[k] = fix(v)
            return out
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    for name, body in local.items():
        defs[renames[name]] = fix(body)
    return fix(schema)


def _step_schema(st: StepType, defs: dict[str, Any], with_inputs: bool) -> dict[str, Any]:
    """The closed table of one step type (its params plus use/input/inputs)."""
    params = _prefixed(st.params.model_json_schema(), f"params.{st.name}", defs)
    props = dict(params.get("properties", {}))
    props["use"] = {"const": st.name, "description": st.description or f"step type {st.name}"}
    if with_inputs:
        kinds = " or ".join(st.consumes) or "any"
        props["input"] = {"type": "string", "pattern": STEP_NAME.pattern,
                          "description": f"the step whose output this step reads ({kinds})"}
        roles = f", in this order: {', '.join(st.input_names)}" if st.input_names else ""
        props["inputs"] = {"type": "array", "items": {"type": "string", "pattern": STEP_NAME.pattern},
                           "description": f"several input steps, in the order the step type reads them ({kinds}){roles}"}
    required = list(params.get("required", []))
    if with_inputs:
        props["matrix"] = _matrix_schema(params.get("properties", {}))
    schema = {"type": "object", "title": st.name, "description": st.description or f"step type {st.name}",
              "properties": props, "required": ["use", *required], "additionalProperties": False}
    if with_inputs:
        schema["not"] = {"required": ["input", "inputs"]}  # one or the other, as the loader says
        if required:  # a required parameter may be given by the matrix instead
            schema["required"] = ["use"]
            schema["if"] = {"not": {"required": ["matrix"]}}
            schema["then"] = {"required": required}
    return schema


def _matrix_schema(param_props: dict[str, Any]) -> dict[str, Any]:
    """A sweep: each key a parameter of the step type, each value a non-empty
    list of values that parameter accepts (see tinybuild.matrix), each a
    number, string or boolean as the loader requires (no tables or lists),
    none repeated. ``uniqueItems`` compares as the loader does once params
    are read: 1 and 1.0 are equal in JSON Schema, true and 1 are not."""
    return {"type": "object", "minProperties": 1, "additionalProperties": False,
            "description": "a sweep: one step per combination of these parameter values (cartesian product), "
                           "named <step>-<param>_<value>...; see the README's Sweeps section",
            "properties": {name: {"type": "array", "minItems": 1, "uniqueItems": True,
                                  "items": {"allOf": [sub, {"type": ["boolean", "number", "string"]}]},
                                  "description": f"values of {name} to sweep"}
                           for name, sub in param_props.items()}}


def _discriminated(types: list[StepType], defs: dict[str, Any], with_inputs: bool, description: str) -> dict[str, Any]:
    """A step table whose shape is chosen by its ``use`` value."""
    branches = []
    for st in types:
        ref = f"step.{st.name}"
        defs[ref] = _step_schema(st, defs, with_inputs)
        branches.append({"if": {"properties": {"use": {"const": st.name}}, "required": ["use"]},
                         "then": {"$ref": f"#/$defs/{ref}"}})
    table: dict[str, Any] = {
        "type": "object",
        "description": description,
        "required": ["use"],
        "properties": {"use": {"enum": [st.name for st in types],
                               "description": "the step type (see tinybuild plugins)"}},
    }
    if branches:
        table["allOf"] = branches
    return table


def recipe_schema(registry: Registry) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    types = sorted(registry.step_types.values(), key=lambda s: s.name)
    datasets = [s for s in types if s.produces == Kind.DATASET]
    others = [s for s in types if s.produces != Kind.DATASET]
    recipe = _prefixed(RecipeMeta.model_json_schema(), "recipe", defs)
    target = _prefixed(Target.model_json_schema(), "target", defs)
    recipe["description"], target["description"] = DESCRIPTIONS["recipe"], DESCRIPTIONS["target"]
    defs["step"] = _discriminated(others, defs, True, "a step: use names its step type")
    step_ref = {"$ref": "#/$defs/step"}
    schema = {
        "$schema": SCHEMA_URI,
        "$id": SCHEMA_ID,
        "title": "tinybuild recipe",
        "description": "A tinybuild recipe (recipe.toml): a dataset, a model and the steps that train, "
                       "optimize, convert and report on it.",
        "type": "object",
        "additionalProperties": False,
        "required": ["recipe"],
        "properties": {
            "recipe": recipe,
            "target": target,
            "dataset": _discriminated(datasets, defs, False, DESCRIPTIONS["dataset"]),
            "model": {**step_ref, "description": DESCRIPTIONS["model"]},
            "steps": {"type": "object", "description": DESCRIPTIONS["steps"],
                      "propertyNames": {"pattern": STEP_NAME.pattern}, "additionalProperties": step_ref},
        },
        "$defs": defs,
    }
    return _plain_descriptions(_without_null(schema))
