"""JSON Schema of recipes, including every installed plugin's params.

Editors (VS Code's Even Better TOML, Taplo, ...) use it to complete and check
recipes: ``tinybuild schema > recipe.schema.json``.
"""

from __future__ import annotations

from typing import Any

from .api import Kind, StepType
from .plugins import Registry
from .recipe import RecipeMeta, Target

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


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
    params = _prefixed(st.params.model_json_schema(), st.name, defs)
    props = dict(params.get("properties", {}))
    props["use"] = {"const": st.name, "description": st.description or f"step type {st.name}"}
    if with_inputs:
        kinds = " or ".join(st.consumes) or "any"
        props["input"] = {"type": "string", "description": f"the step whose output this step reads ({kinds})"}
        roles = f", in this order: {', '.join(st.input_names)}" if st.input_names else ""
        props["inputs"] = {"type": "array", "items": {"type": "string"}, "description": f"several input steps ({kinds}){roles}"}
    return {"type": "object", "title": st.name, "description": st.description,
            "properties": props, "required": ["use", *params.get("required", [])], "additionalProperties": False}


def recipe_schema(registry: Registry) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    types = sorted(registry.step_types.values(), key=lambda s: s.name)
    datasets = [_step_schema(s, defs, False) for s in types if s.produces == Kind.DATASET]
    others = [_step_schema(s, defs, True) for s in types if s.produces != Kind.DATASET]
    return {
        "$schema": SCHEMA_URI,
        "title": "tinybuild recipe",
        "type": "object",
        "additionalProperties": False,
        "required": ["recipe"],
        "properties": {
            "recipe": _prefixed(RecipeMeta.model_json_schema(), "recipe", defs),
            "target": _prefixed(Target.model_json_schema(), "target", defs),
            "dataset": {"oneOf": datasets} if datasets else {"type": "object"},
            "model": {"oneOf": others} if others else {"type": "object"},
            "steps": {"type": "object", "additionalProperties": {"oneOf": others} if others else {"type": "object"}},
        },
        "$defs": defs,
    }
